"""Submitting compiled pipelines to a Kubeflow Pipelines server: runs, schedules, listings.

- `pipeline_package`: compile a run config into a KFP package and name it by its content.
- `kfp_connection`: one checked, quiet kfp.Client, with server errors turned into one sentence.
- `pipeline_upload`: upload a package as a pipeline version exactly once.
- `kfp_runs`: start a run, create a recurring run, list recent runs.
"""
