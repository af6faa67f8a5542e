"""Online LIFT: one document posted to the endpoint is LIFTed on the cluster, with a status record in the store.

The ingress (`lift_ray.serving.deployments`) hands `POST /v1/documents` and `GET /v1/documents/{id}` to
`OnlineLift` (`endpoint.py`): it validates the body and reads the document (`requests.py`: the body, the
document id, the URI allow-list), decides with `admit` whether a run is already in flight, writes the
`queued` record (`status.py`: records in the store, staleness, transitions) and adds the document to its
namespace's open batch (`batcher.py`). When the batch closes it runs `run_online_lift` (`runner.py`, with a
heartbeat thread beside it): on the warm worker (`warm.py`: generator and trainer loaded once, kept between
batches, released when idle), or as one Ray task running `lift_documents` for the whole batch.
`run_config.py` makes the runs' LiftConfig from the endpoint's `online_lift` settings.
"""

from lift_ray.online.batcher import Batcher, OnlineBatch
from lift_ray.online.endpoint import OnlineLift
from lift_ray.online.requests import DocumentRequest, RequestRejected, check_uri, derive_id, load_document
from lift_ray.online.run_config import for_namespace, lift_config_for
from lift_ray.online.runner import PUBLISHED_POLL_S, online_lift_task, run_online_lift
from lift_ray.online.status import (
    ACTIVE,
    HEARTBEAT_S,
    RECORD_FIELDS,
    STALE_AFTER_S,
    STATUSES,
    admit,
    document_status,
    final_record,
    is_stale,
    mark_crashed,
    new_record,
    published_by_run,
    read_status,
    seconds_between,
    with_heartbeat,
    write_status,
)
from lift_ray.online.warm import WarmLifter, WarmPool

__all__ = [
    "ACTIVE",
    "HEARTBEAT_S",
    "PUBLISHED_POLL_S",
    "RECORD_FIELDS",
    "STALE_AFTER_S",
    "STATUSES",
    "Batcher",
    "DocumentRequest",
    "OnlineBatch",
    "OnlineLift",
    "RequestRejected",
    "admit",
    "check_uri",
    "derive_id",
    "document_status",
    "final_record",
    "for_namespace",
    "is_stale",
    "lift_config_for",
    "load_document",
    "mark_crashed",
    "new_record",
    "online_lift_task",
    "published_by_run",
    "read_status",
    "run_online_lift",
    "seconds_between",
    "with_heartbeat",
    "write_status",
    "WarmLifter",
    "WarmPool",
]
