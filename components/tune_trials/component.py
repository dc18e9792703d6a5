from kfp.dsl import Dataset, Input

from components.component_defaults import trainflow_component


@trainflow_component
def tune_trials(cache: Input[Dataset], run_config: dict, study_root: str, worker: int) -> int:
    """One trial worker of the study: ask for trials and train them until the budget is spent.

    cache: the build_cache output every trial trains and validates on (the test split is never read).
    run_config: the whole run config with its tune section (section_payload).
    study_root: the workspace folder holding tuning/<study>/ (journal, trial folders); the same for every
      worker, so workers share the study and a re-run resumes it.
    worker: this worker's index in the ParallelFor (for the trial table only).
    Returns the number of trials this worker ran.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.tuning import tune_trials as stage

    return run_stage(stage, cache_dir=cache.path, run_config=run_config, study_root=study_root, worker=worker)
