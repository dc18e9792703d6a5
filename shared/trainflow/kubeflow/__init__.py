"""The only part of trainflow that talks to a cluster: pipeline submission and distributed training jobs.

Submitting compiled pipelines to a Kubeflow Pipelines server:
- `pipeline_package`: compile a run config into a KFP package and name it by its content;
- `kfp_connection`: one checked, quiet kfp.Client, with server errors turned into one sentence;
- `pipeline_upload`: upload a package as a pipeline version exactly once;
- `kfp_runs`: start a run, create a recurring run, list recent runs.

Distributed training (PyTorchJob / TrainJob) that the train stage launches:
- `train_launch`: `launch_training_job` — the cluster side of the train stage;
- `distributed_spec`: what the training pods need (`DistributedTrainingSpec`, `worker_command`);
- `job_specs`: PyTorchJob / TrainJob bodies built with the Kubeflow packages' typed models;
- `job_schema`: the schema check both the launcher and the tests' fake API server use;
- `job_names`: deterministic job names from the KFP run and task (re-attach after a restart);
- `job_kinds`: per-backend API coordinates, rank-0 pod labels and status reading;
- `job_launcher`: `JobLauncher` — create or re-attach, follow, surface failures, collect, clean up;
- `pod_logs`, `cluster_api`: rank-0 log following and API access/error messages.

Nothing here imports the stages package: stages call down into this package, never the reverse.
"""
