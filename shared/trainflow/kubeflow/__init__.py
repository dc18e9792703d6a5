"""The only part of trainflow that talks to a cluster: distributed training on Kubeflow.

- `distributed_spec`: what the training pods need (`DistributedTrainingSpec`, `worker_command`);
- `job_specs`: PyTorchJob / TrainJob bodies built with the Kubeflow packages' typed models;
- `job_schema`: the schema check both the launcher and the tests' fake API server use;
- `job_names`: deterministic job names from the KFP run and task (re-attach after a restart);
- `job_kinds`: per-backend API coordinates, rank-0 pod labels and status reading;
- `job_launcher`: `JobLauncher` — create or re-attach, follow, surface failures, collect, clean up;
- `pod_logs`, `cluster_api`: rank-0 log following and API access/error messages.
"""
