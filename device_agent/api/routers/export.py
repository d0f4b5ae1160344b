"""A domain's adapter version as a deployable ONNX bundle (one zip). The export itself runs
in the torch worker (the API never imports torch), which caches it by the adapter's
content: a new version, an activation or a rollback gets the matching export."""
from typing import Dict, Optional

from fastapi import APIRouter, Query
from fastapi.responses import Response

from device_agent.api.deps import DomainFilesDep, DomainName, StoreDep, SupervisorDep
from device_agent.errors import Conflict, InvalidInput, UnknownName
from device_agent.jobspec import PARAM_BY_NAME
from device_agent.store import snapshots
from device_agent.store.files import zip_files

router = APIRouter(tags=["adapters"])
FORMATS = ("onnx",)
INPUT_NORMS = ("builtin", "imagenet")
BUNDLE_FILES = ("model.onnx", "labels.txt", "export.json")
EXPORT_TIMEOUT_S = 900.0  # a ResNet-50 export and its parity run on a Nano's CPU


@router.get("/domains/{domain}/export", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}},
            summary="the active (or a given) adapter version as an ONNX bundle: model.onnx, "
                    "labels.txt, export.json; checked against PyTorch before it is offered")
def export_domain(domain: DomainName, store: StoreDep, supervisor: SupervisorDep,
                  domain_files: DomainFilesDep, format: str = "onnx",
                  version: Optional[int] = Query(None, ge=1),
                  input_norm: str = "builtin", softmax: bool = True) -> Response:
    if format not in FORMATS:
        raise InvalidInput("unknown export format %r; known: %s" % (format, ", ".join(FORMATS)))
    if input_norm not in INPUT_NORMS:
        raise InvalidInput("input_norm must be one of %s" % ", ".join(INPUT_NORMS))
    adapter = _version(store, domain, version)
    with supervisor.long_request:  # no job starts behind it (one export at a time too)
        result = supervisor.request(
            "export", domain=domain, adapter_dir=adapter["path"],
            cache_dir=domain_files.export_cache(domain), input_norm=input_norm,
            softmax=softmax, opset=13, parity=_parity_source(store, adapter),
            timeout=EXPORT_TIMEOUT_S)
    filename = "%s-v%d-%s.zip" % (domain, adapter["version"], format)
    headers = {"Content-Disposition": 'attachment; filename="%s"' % filename,
               "X-Export-Sha256": str(result["onnx_sha256"])}
    return Response(zip_files(str(result["dir"]), BUNDLE_FILES), media_type="application/zip",
                    headers=headers)


def _version(store, domain: str, version: Optional[int]) -> Dict[str, object]:
    """The version asked for, else the active one (404: unknown domain or version)."""
    store.get_domain(domain)
    if version is None:
        adapter = store.active_adapter(domain)
        if adapter is None:
            raise Conflict("domain %r has no adapter yet" % domain)
        return adapter
    for adapter in store.versions(domain):
        if adapter["version"] == version:
            return adapter
    raise UnknownName("domain %r has no adapter version %d" % (domain, version))


def _parity_source(store, adapter: Dict[str, object]) -> Dict[str, object]:
    """Where the worker finds the version's validation images: the dataset its job trained
    on, with the job's split. An imported version has none (synthetic images then)."""
    if not adapter.get("job_id"):
        return {}
    job = store.get_job(adapter["job_id"])
    if job.get("snapshot_id"):  # issue 14: the snapshot it trained, val/ as it was
        directory = snapshots.materialized(store.data_paths.snapshots(job["domain"]),
                                           job["snapshot_id"])
    elif job.get("dataset_id") is not None:
        directory = store.get_dataset(job["dataset_id"])["path"]
    else:
        return {}
    params = job.get("params") or {}
    return {"dataset_dir": directory,
            "val_fraction": params.get("val_fraction", PARAM_BY_NAME["val_fraction"].default),
            "seed": params.get("seed", PARAM_BY_NAME["seed"].default)}
