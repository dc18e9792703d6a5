from kfp.dsl import Dataset, Markdown, Output

from components.component_defaults import trainflow_component


@trainflow_component
def ingest_split(ingest_config: dict, seed: int, task: str, dataset: Output[Dataset], report: Output[Markdown]):
    """Check, split and snapshot a dataset (image folder, table, or a bundled scikit-learn set).

    ingest_config: the `ingest` config section (source, columns, resolution, split fractions).
    seed: makes the train/val/test assignment reproducible.
    task: text_to_image | classification | regression | segmentation (decides which columns are required).
    dataset: folder with manifest.jsonl, dataset.json, rejected.jsonl and resized images/masks;
      metadata has counts and content_sha256.
    report: Markdown list of skipped records and why.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.ingest_split import ingest_split as stage

    run_stage(stage, config=ingest_config, seed=seed, dataset=dataset, report=report, task=task)
