"""JobLauncher against the fake Kubernetes API: create → watch → collect, failures, re-attach, cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_kubernetes_api import FakeKubernetesApi, Phase, failure_script, success_script
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from trainflow.errors import ConfigError, UserFacingError
from trainflow.kubeflow.cluster_api import ClusterAccessError, kubernetes_api_client
from trainflow.kubeflow.distributed_spec import DistributedTrainingSpec, PvcMount, worker_command
from trainflow.kubeflow.job_launcher import JobLauncher, TrainingJobFailed, TrainingJobTimeout
from trainflow.kubeflow.job_specs import build_job
from trainflow.kubeflow.pod_logs import Rank0LogFollower

JOB = "trainflow-train-0123456789"
BACKENDS = ["pytorchjob", "trainjob"]


class Run:
    """One launcher run's paths and the spec, on a workspace folder standing in for the shared PVC."""

    def __init__(self, tmp_path: Path, backend: str, **changes):
        self.workspace = tmp_path / "workspace"
        self.request_path = self.workspace / "runs" / JOB / "train-request.json"
        self.output_dir = self.workspace / "runs" / JOB / "model"
        self.model_dir = tmp_path / "kfp-outputs" / "model"
        self.plural = f"{backend}s"
        self.request = {"output_dir": str(self.output_dir), "config": {"train": {"epochs": 1}}}
        fields = dict(backend=backend, nodes=2, gpus_per_node=4, image="trainflow:test", namespace="ml",
                      command=worker_command(self.request_path), volumes=[PvcMount("workspace", str(self.workspace))])
        self.spec = DistributedTrainingSpec(**{**fields, **changes})
        self.lines: list[str] = []

    def finish_training(self) -> None:
        """What rank 0 leaves behind: the model folder, summary last."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "unet").mkdir(exist_ok=True)
        (self.output_dir / "unet" / "model.safetensors").write_bytes(b"weights")
        (self.output_dir / "trainflow_training.json").write_text(json.dumps({"best_epoch": 3, "best_val_loss": 0.12}))

    def launcher(self, fake: FakeKubernetesApi, **options) -> JobLauncher:
        options = {"poll_interval_s": 0.001, "max_poll_interval_s": 0.005, "emit": self.lines.append, **options}
        return JobLauncher(self.spec, kubernetes_api_client(host=fake.url), **options)

    def launch(self, fake: FakeKubernetesApi, **options):
        return self.launcher(fake, **options).run(JOB, self.request, self.request_path, self.model_dir)


@pytest.fixture
def fake():
    with FakeKubernetesApi() as api:
        yield api


@pytest.mark.parametrize("backend", BACKENDS)
def test_success_creates_follows_rank0_copies_model_and_deletes(backend, fake, tmp_path):
    run = Run(tmp_path, backend)
    fake.scripts[JOB] = success_script(run.plural, on_success=run.finish_training)
    result = run.launch(fake)
    assert result.created and result.phase.succeeded
    assert result.training_summary == {"best_epoch": 3, "best_val_loss": 0.12}
    assert (run.model_dir / "unet" / "model.safetensors").read_bytes() == b"weights"
    assert json.loads(run.request_path.read_text()) == run.request
    assert len(fake.calls_to("POST", run.plural)) == 1 and len(fake.calls_to("DELETE", run.plural)) == 1
    assert fake.jobs == {} and fake.problems == []
    assert "[rank 0] epoch 1 loss 0.50" in run.lines
    assert not any("rank 4 says hello" in line for line in run.lines), "a worker's log was shown as rank 0's"
    kind = "PyTorchJob" if backend == "pytorchjob" else "TrainJob"
    assert f"{kind} {JOB}: Running" in run.lines


@pytest.mark.parametrize("backend, reason, message", [
    ("pytorchjob", "PyTorchJobFailed", f"PyTorchJob ml/{JOB} is failed because 1 Master replica(s) failed."),
    ("trainjob", "FailedJobs", "jobset failed due to reaching max number of restarts"),
])
def test_failure_raises_operator_reason_and_rank0_log_tail(backend, reason, message, fake, tmp_path):
    run = Run(tmp_path, backend)
    fake.scripts[JOB] = failure_script(reason, message, rank0_log=("epoch 1 loss nan", "ValueError: loss is nan"))
    with pytest.raises(TrainingJobFailed) as caught:
        run.launch(fake)
    text = str(caught.value)
    assert f"failed: {reason}: {message}" in text
    assert "Last lines of the rank-0 log:\n  epoch 1 loss nan\n  ValueError: loss is nan" in text
    assert not run.model_dir.exists()
    assert len(fake.calls_to("DELETE", run.plural)) == 1 and fake.problems == []


class LauncherKilled(BaseException):
    """Stands in for SIGKILL: the launcher stops mid-wait without cleaning up."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_restarted_launcher_reattaches_instead_of_creating_a_second_job(backend, fake, tmp_path):
    first = Run(tmp_path, backend, delete_on_exit=False)  # killed: its finally-cleanup never runs
    fake.scripts[JOB] = [Phase("Created"), Phase("Running", rank0_log=("epoch 1 loss 0.50",)),
                         Phase("Running", rank0_log=("epoch 2 loss 0.40",)),
                         Phase("Succeeded" if backend == "pytorchjob" else "Complete", on_enter=first.finish_training)]

    def killed_once_running(_seconds):
        if any(line.endswith(": Running") for line in first.lines):
            raise LauncherKilled()

    with pytest.raises(LauncherKilled):
        first.launch(fake, sleep=killed_once_running)
    first.request_path.write_text('{"output_dir": "written by the first launcher"}')

    second = Run(tmp_path, backend)
    result = second.launch(fake)
    assert not result.created and result.phase.succeeded
    assert len(fake.calls_to("POST", second.plural)) == 1, "a second job was created"
    assert second.request_path.read_text() == '{"output_dir": "written by the first launcher"}'
    assert any(line.startswith("Re-attaching to") for line in second.lines)
    assert "[rank 0] epoch 2 loss 0.40" in second.lines
    assert (second.model_dir / "trainflow_training.json").is_file()
    assert fake.jobs == {} and fake.problems == []


def test_losing_a_create_race_attaches_to_the_winner(fake, tmp_path):
    run = Run(tmp_path, "pytorchjob")
    fake.scripts[JOB] = success_script(run.plural, on_success=run.finish_training)
    fake.lose_create_race = True
    result = run.launch(fake)
    assert not result.created and result.phase.succeeded
    assert any("created meanwhile by another launcher" in line for line in run.lines)


@pytest.mark.parametrize("backend", BACKENDS)
def test_job_is_kept_when_delete_on_exit_is_off(backend, fake, tmp_path):
    run = Run(tmp_path, backend, delete_on_exit=False)
    fake.scripts[JOB] = success_script(run.plural, on_success=run.finish_training)
    run.launch(fake)
    assert fake.calls_to("DELETE") == [] and (run.plural, "ml", JOB) in fake.jobs


def test_ctrl_c_while_waiting_deletes_the_job(fake, tmp_path):
    run = Run(tmp_path, "trainjob")
    fake.scripts[JOB] = [Phase("Created"), Phase("Running")]

    def interrupt(_seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.launch(fake, sleep=interrupt)
    assert len(fake.calls_to("DELETE", "trainjobs")) == 1 and fake.jobs == {}


def test_timeout_names_the_last_phase_and_cleans_up(fake, tmp_path):
    run = Run(tmp_path, "pytorchjob")
    fake.scripts[JOB] = [Phase("Created"), Phase("Running")]
    with pytest.raises(TrainingJobTimeout, match=r"did not finish within 0.05 s \(last phase: Running\)"):
        run.launch(fake, timeout_s=0.05)
    assert len(fake.calls_to("DELETE", "pytorchjobs")) == 1


def test_a_job_still_being_deleted_is_waited_out_then_recreated(tmp_path):
    with FakeKubernetesApi(deletion_gets=2) as fake:
        run = Run(tmp_path, "pytorchjob")
        fake.scripts[JOB] = failure_script("PyTorchJobFailed", "OOMKilled")
        with pytest.raises(TrainingJobFailed):
            run.launch(fake)
        assert fake.jobs[("pytorchjobs", "ml", JOB)].body["metadata"].get("deletionTimestamp")
        fake.scripts[JOB] = success_script(run.plural, on_success=run.finish_training)
        result = run.launch(fake)  # a KFP retry of the train task
        assert result.created and result.phase.succeeded
        assert len(fake.calls_to("POST", "pytorchjobs")) == 2 and fake.problems == []
        assert any("is being deleted; waiting" in line for line in run.lines)


def test_brief_api_outage_while_following_is_tolerated(fake, tmp_path):
    run = Run(tmp_path, "trainjob")
    fake.scripts[JOB] = success_script(run.plural, on_success=run.finish_training)
    fake.unavailable_gets = 0

    def outage_once(_seconds):
        if not getattr(outage_once, "done", False):
            fake.unavailable_gets, outage_once.done = 3, True

    assert run.launch(fake, sleep=outage_once).phase.succeeded


def test_missing_rights_on_trainjobs_is_one_sentence_about_rbac(tmp_path):
    with FakeKubernetesApi(forbidden_plurals={"trainjobs"}) as fake:
        run = Run(tmp_path, "trainjob")
        with pytest.raises(ClusterAccessError) as caught:
            run.launch(fake)
    text = str(caught.value)
    assert "HTTP 403" in text and "trainjobs.trainer.kubeflow.org" in text and "Role" in text
    assert not run.request_path.exists() and fake.calls_to("POST") == [] and fake.calls_to("DELETE") == []


def test_operator_not_installed_says_what_to_install(tmp_path):
    with FakeKubernetesApi(installed_groups={"kubeflow.org"}) as fake:
        with pytest.raises(ClusterAccessError, match="has no trainjobs.trainer.kubeflow.org API .* Kubeflow Trainer v2"):
            Run(tmp_path, "trainjob").launch(fake)


def test_a_job_not_made_by_trainflow_is_neither_adopted_nor_deleted(fake, tmp_path):
    run = Run(tmp_path, "pytorchjob")
    foreign = build_job(run.spec, JOB)
    foreign["metadata"]["labels"] = {"team": "someone-else"}
    fake.add_job("pytorchjobs", foreign, success_script("pytorchjobs"))
    with pytest.raises(UserFacingError, match="already exists .* not made by trainflow"):
        run.launch(fake)
    assert fake.calls_to("DELETE") == [] and fake.calls_to("POST") == []


def test_request_and_output_must_be_on_a_mounted_volume(fake, tmp_path):
    run = Run(tmp_path, "pytorchjob")
    with pytest.raises(ConfigError, match="is not on any volume the training pods mount"):
        run.launcher(fake).run(JOB, run.request, tmp_path / "elsewhere.json", run.model_dir)
    readonly = Run(tmp_path, "pytorchjob", volumes=[PvcMount("workspace", str(run.workspace), read_only=True)])
    with pytest.raises(ConfigError, match="output_dir .* is not on a writable volume"):
        readonly.launch(fake)
    with pytest.raises(ConfigError, match="must name an absolute 'output_dir'"):
        run.launcher(fake).run(JOB, {}, run.request_path, run.model_dir)
    assert fake.calls == []


def test_success_without_the_training_summary_is_an_error(fake, tmp_path):
    run = Run(tmp_path, "pytorchjob")
    fake.scripts[JOB] = success_script(run.plural)
    with pytest.raises(UserFacingError, match="succeeded but .*trainflow_training.json is missing"):
        run.launch(fake)
    assert not run.model_dir.exists() and len(fake.calls_to("DELETE")) == 1


@pytest.mark.parametrize("change, status", [
    (lambda body: body["spec"]["trainer"].update(gpus=4), 422),
    (lambda body: body.update(apiVersion="trainer.kubeflow.org/v1"), 400),
])
def test_fake_api_server_rejects_bodies_a_real_one_would(change, status, fake, tmp_path):
    body = build_job(Run(tmp_path, "trainjob").spec, JOB)
    change(body)
    api = k8s.CustomObjectsApi(kubernetes_api_client(host=fake.url))
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs", body)
    assert caught.value.status == status and len(fake.problems) == 1


class StubCoreApi:
    """Pods and logs for the log follower alone: what `read_namespaced_pod_log` returns per call."""

    def __init__(self, pods_and_logs):
        self.pods_and_logs, self.log_requests = list(pods_and_logs), []

    def list_namespaced_pod(self, namespace, label_selector):
        pod = self.pods_and_logs[0][0]
        return k8s.V1PodList(items=[k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=pod))])

    def read_namespaced_pod_log(self, name, namespace, **options):
        self.log_requests.append(options)
        _, text = self.pods_and_logs.pop(0)
        return type("Response", (), {"data": text.encode()})()


def test_log_follower_prints_each_line_once_and_follows_a_new_pod():
    stamp = "2026-01-01T10:00:0{}.{}Z"
    core = StubCoreApi([
        ("master-0", f"{stamp.format(1, '5')} a\n{stamp.format(2, '000000001')} b\n"),
        ("master-0", f"{stamp.format(2, '000000001')} b\n{stamp.format(2, '000000001')} c\n{stamp.format(3, '1')} d\n"),
        ("master-0-restarted", f"{stamp.format(1, '1')} again from the top\n"),
    ])
    lines: list[str] = []
    follower = Rank0LogFollower(core, "ml", "x=y", "pytorch", lines.append)
    for _ in range(3):
        follower.poll()
    assert lines == ["[rank 0] a", "[rank 0] b", "[rank 0] c", "[rank 0] d",
                     "[rank 0] (now following pod master-0-restarted)", "[rank 0] again from the top"]
    assert "tail_lines" in core.log_requests[0] and "since_seconds" in core.log_requests[1]
    assert list(follower.last_lines)[-2:] == ["d", "again from the top"]
