"""Check PyTorchJob, TrainJob and Katib Experiment bodies against schemas derived from the installed API packages.

No installed package ships the CRDs' OpenAPI v3 schemas (site-packages has no `openAPIV3Schema`
for kubeflow.org or trainer.kubeflow.org; kubernetes-validate covers core kinds only), so the
schemas are derived at runtime from the typed models the packages do ship:

- TrainJob (trainer.kubeflow.org/v1alpha1): kubeflow-trainer-api's pydantic models, turned into
  JSON Schema by pydantic with unknown fields closed off and the oneOf wrappers (Quantity,
  IntOrString) written as the JSON values they stand for;
- PyTorchJob (kubeflow.org/v1): kubeflow-training's openapi-generator models plus the kubernetes
  client's, walked through `openapi_types`/`attribute_map`; a field is required when the model's
  own setter refuses None.

Both are checked with jsonschema, so the launcher and the fake API server in the tests share one
validator. The CRD rule every TrainJob carries (metadata.name is an RFC 1035 label of at most 63
characters) is added to both kinds by hand, because the operators' derived names depend on it.
"""

from __future__ import annotations

import functools
import re
from types import SimpleNamespace
from typing import Any

import jsonschema
from pydantic.json_schema import GenerateJsonSchema

from trainflow.errors import UserFacingError

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
TRAINJOB_API_VERSION = "trainer.kubeflow.org/v1alpha1"
KATIB_API_VERSION = "kubeflow.org/v1beta1"
RFC1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

_SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"},
            "float": {"type": "number"}, "datetime": {"type": "string"}, "date": {"type": "string"},
            "object": {}, "Quantity": {"type": ["number", "string"]}}
_ONE_OF_JSON = {"str": "string", "int": "integer", "float": "number"}


class CustomResourceInvalid(UserFacingError):
    """A PyTorchJob/TrainJob body does not match its kind's schema; the message names the field."""


class _ClosedPydanticSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, but with unknown fields rejected (the CRDs are structural)."""

    def model_schema(self, schema):
        fields = schema["cls"].model_fields
        if "one_of_schemas" in fields:  # openapi oneOf wrapper: the JSON holds the bare value
            return {"type": sorted(_ONE_OF_JSON[name] for name in fields["one_of_schemas"].default)}
        closed = super().model_schema(schema)
        closed["additionalProperties"] = False
        return closed

    def nullable_schema(self, schema):
        # Optional means "may be left out"; we never send null, and a plain schema gives clearer errors.
        return self.generate_inner(schema["schema"])


def _openapi_model(type_name: str) -> Any:
    import kubernetes.client.models as kubernetes_models
    import kubeflow.katib.models as katib_models
    import kubeflow.training.models as training_models

    for module in (training_models, katib_models, kubernetes_models):
        if hasattr(module, type_name):
            return getattr(module, type_name)
    # kubeflow-training names core types by Go package ('K8sIoApiAutoscalingV2MetricSpec');
    # the kubernetes client calls the same type 'V2MetricSpec'.
    match = re.fullmatch(r"K8sIoApi[A-Z][a-z]+(V\d\w*)", type_name)
    if match and hasattr(kubernetes_models, match.group(1)):
        return getattr(kubernetes_models, match.group(1))
    raise LookupError(f"no installed model is named {type_name}")


def _required_attributes(model: Any) -> list[str]:
    probe = model.__new__(model)
    probe.local_vars_configuration = SimpleNamespace(client_side_validation=True)
    required = []
    for attribute in model.openapi_types:
        try:
            setattr(probe, attribute, None)
        except ValueError:
            required.append(model.attribute_map[attribute])
    return required


def _openapi_schema(type_name: str, definitions: dict[str, Any]) -> dict[str, Any]:
    if type_name in _SCALARS:
        return dict(_SCALARS[type_name])
    if match := re.fullmatch(r"list\[(.*)\]", type_name):
        return {"type": "array", "items": _openapi_schema(match.group(1), definitions)}
    if match := re.fullmatch(r"dict\(str, (.*)\)", type_name):
        return {"type": "object", "additionalProperties": _openapi_schema(match.group(1), definitions)}
    if type_name not in definitions:
        model = _openapi_model(type_name)
        definitions[type_name] = {}  # placeholder first: models refer to themselves (JSONSchemaProps)
        properties = {model.attribute_map[attribute]: _openapi_schema(kind, definitions)
                      for attribute, kind in model.openapi_types.items()}
        definitions[type_name] = {"type": "object", "properties": properties,
                                  "required": _required_attributes(model), "additionalProperties": False}
    return {"$ref": f"#/$defs/{type_name}"}


def _with_identity(derived: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """Add what the CRD fixes for every object: apiVersion, kind, a valid name, a spec."""
    definitions = derived.pop("$defs", {})
    identity = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "pattern": RFC1035_LABEL, "maxLength": 63}}},
        },
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": definitions,
            "allOf": [derived, identity]}


@functools.cache
def pytorchjob_schema() -> dict[str, Any]:
    """JSON Schema of a kubeflow.org/v1 PyTorchJob, from kubeflow-training's and kubernetes' models."""
    definitions: dict[str, Any] = {}
    root = _openapi_schema("KubeflowOrgV1PyTorchJob", definitions)
    return _with_identity({**root, "$defs": definitions}, PYTORCHJOB_API_VERSION, "PyTorchJob")


@functools.cache
def trainjob_schema() -> dict[str, Any]:
    """JSON Schema of a trainer.kubeflow.org/v1alpha1 TrainJob, from kubeflow-trainer-api's models."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    derived = TrainerV1alpha1TrainJob.model_json_schema(by_alias=True, schema_generator=_ClosedPydanticSchema)
    return _with_identity(derived, TRAINJOB_API_VERSION, "TrainJob")


@functools.cache
def katib_experiment_schema() -> dict[str, Any]:
    """JSON Schema of a Katib kubeflow.org/v1beta1 Experiment, from kubeflow-katib's models (trialSpec: any object)."""
    definitions: dict[str, Any] = {}
    root = _openapi_schema("V1beta1Experiment", definitions)
    return _with_identity({**root, "$defs": definitions}, KATIB_API_VERSION, "Experiment")


@functools.cache
def _object_validator(type_name: str) -> jsonschema.Draft202012Validator:
    definitions: dict[str, Any] = {}
    root = _openapi_schema(type_name, definitions)
    return jsonschema.Draft202012Validator({"$schema": "https://json-schema.org/draft/2020-12/schema",
                                            "$defs": definitions, **root})


def openapi_object_problems(body: Any, type_name: str) -> list[str]:
    """Schema violations of a plain dict against one kubernetes-client model (e.g. 'V1Job'), as 'path: problem'."""
    errors = sorted(_object_validator(type_name).iter_errors(body), key=jsonschema.exceptions.relevance, reverse=True)
    return [f"{_field_path(error)}: {error.message}" for error in errors]


_SCHEMAS = {("PyTorchJob", PYTORCHJOB_API_VERSION): pytorchjob_schema,
            ("TrainJob", TRAINJOB_API_VERSION): trainjob_schema,
            ("Experiment", KATIB_API_VERSION): katib_experiment_schema}


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_SCHEMAS[(kind, api_version)]())


def _field_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "the top level"


def custom_resource_problems(body: Any) -> list[str]:
    """Every schema violation in `body` as 'field.path: what is wrong', most relevant first.

    Input: a PyTorchJob or TrainJob as a plain dict (what is POSTed to the API server).
    Output: an empty list when it matches; otherwise one line per problem. A body that is not a
    dict or names another kind/apiVersion is one problem.
    """
    if not isinstance(body, dict):
        return [f"the top level: expected a JSON object, got {type(body).__name__}"]
    key = (body.get("kind"), body.get("apiVersion"))
    if key not in _SCHEMAS:
        known = ", ".join(f"{kind} ({api_version})" for kind, api_version in _SCHEMAS)
        return [f"kind/apiVersion: {key[0]!r} / {key[1]!r} is not one of {known}"]
    errors = sorted(_validator(*key).iter_errors(body), key=jsonschema.exceptions.relevance, reverse=True)
    return [f"{_field_path(error)}: {error.message}" for error in errors]


def validate_custom_resource(body: Any) -> None:
    """Raise CustomResourceInvalid naming the first bad field when `body` breaks its kind's schema.

    Input: a PyTorchJob or TrainJob dict. Output: None when valid. Failure: CustomResourceInvalid
    with one sentence (kind, name, field path, problem, and how many other problems there are).
    """
    problems = custom_resource_problems(body)
    if not problems:
        return
    kind = body.get("kind", "custom resource") if isinstance(body, dict) else "custom resource"
    name = (body.get("metadata") or {}).get("name", "<unnamed>") if isinstance(body, dict) else "<unnamed>"
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    raise CustomResourceInvalid(
        f"{kind} {name} does not match the {kind} schema at {problems[0]}{more}; "
        "fix that field in the distributed training settings.")
