"""The one place that says which image every trainflow component runs in.

Override at compile time with TRAINFLOW_IMAGE (e.g. your registry's copy of
images/Dockerfile). The image already holds kfp and trainflow at pinned
versions, so components skip KFP's runtime `pip install kfp`, which would need
network access from the pod and could drift from the pinned version.
"""

import functools
import os

from kfp import dsl

TRAINFLOW_IMAGE = os.environ.get("TRAINFLOW_IMAGE", "ghcr.io/trainflow/trainflow:0.1.0")

trainflow_component = functools.partial(dsl.component, base_image=TRAINFLOW_IMAGE, install_kfp_package=False)
