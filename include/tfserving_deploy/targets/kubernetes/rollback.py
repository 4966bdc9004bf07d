"""Going back to what served before: after a failed rollout (inside ``deploy``) or a failed
validation (the DAG's ``rollback`` task). ``apps/v1`` has no rollback call: like
``kubectl rollout undo``, the previous pod template is written back, here from the
``previous-spec`` annotation. A first-ever deployment has nothing to go back to: it is deleted
(unless ``keep_failed_first_deploy``).
"""

from __future__ import annotations

import json
import logging

from ...errors import RolloutError, TargetError
from ..results import Change
from .api import KubernetesApi
from .manifests import ANNOTATION_PREVIOUS_SPEC, ANNOTATION_RESTORED_FROM, ANNOTATION_VERSION, object_name
from .objects import image_of, owned_annotations
from .rollout import RolloutFailed, RolloutWatch

log = logging.getLogger(__name__)


class Rollback:
    def __init__(self, api: KubernetesApi, watch: RolloutWatch, *, keep_failed_first_deploy: bool = False):
        self.api, self.watch, self.keep_failed_first_deploy = api, watch, keep_failed_first_deploy

    def undo(
        self, failure: RolloutFailed, model_name: str, image: str, change: Change, before: dict | None, timeout: float
    ) -> RolloutError:
        """Undo what a deploy changed; the RolloutError says what failed and what was restored."""
        try:
            if change is Change.CREATED:
                restored = self.remove_first_deployment(model_name)
            elif change is Change.UPDATED and before is not None:
                restored = self.restore_spec(model_name, before, timeout, replaced_image=image)
            else:  # this run wrote nothing: an earlier run left this revision in place
                restored = self.restore_previous(model_name, timeout, failed_image=image)
        except TargetError as exc:
            return RolloutError(f"{failure}\nrollback failed too: {exc}")
        return RolloutError(f"{failure}\nrolled back: {restored}")

    def restore_previous(self, model_name: str, timeout: float, *, failed_image: str | None) -> str:
        """Go back to the ``previous-spec`` annotation recorded at the last image change."""
        name = object_name(model_name)
        where = f"{self.api.namespace}/{name}"
        live = self.api.read_deployment(name)
        if live is None:
            return f"nothing to restore: Deployment {where} does not exist"
        live_image = image_of(live["spec"]["template"])
        if failed_image and live_image != failed_image:
            return f"nothing to roll back: Deployment {where} runs {live_image}, not {failed_image}"
        annotations = live["metadata"].get("annotations") or {}
        if not annotations.get(ANNOTATION_PREVIOUS_SPEC):
            if annotations.get(ANNOTATION_RESTORED_FROM):
                return (
                    f"nothing older to roll back to: Deployment {where} already runs {live_image}, restored "
                    f"in place of {annotations[ANNOTATION_RESTORED_FROM]}"
                )
            return self.remove_first_deployment(model_name)
        previous = json.loads(annotations[ANNOTATION_PREVIOUS_SPEC])
        return self.restore_spec(model_name, previous, timeout, replaced_image=live_image or "unknown")

    def restore_spec(self, model_name: str, snapshot: dict, timeout: float, *, replaced_image: str) -> str:
        """Patch the Deployment back to ``snapshot`` (replicas, template, owned annotations) and wait."""
        name = object_name(model_name)
        where = f"{self.api.namespace}/{name}"
        live = self.api.read_deployment(name)
        if live is None:
            return f"nothing to restore: Deployment {where} does not exist"
        image = image_of(snapshot["template"]) or "unknown"
        annotations = dict.fromkeys(owned_annotations(live))  # null deletes in a merge patch
        annotations.update(snapshot["annotations"])
        annotations[ANNOTATION_RESTORED_FROM] = replaced_image
        patch = {
            "metadata": {"annotations": annotations},
            "spec": {"replicas": snapshot["replicas"], "template": snapshot["template"]},
        }
        self.api.patch(
            f"patch Deployment {where} back to {image}", self.api.apps.patch_namespaced_deployment, name, patch
        )
        try:
            available = self.watch.wait(model_name, image, snapshot["replicas"], timeout)
        except RolloutFailed as exc:
            raise TargetError(f"restoring {image} did not finish: {exc}") from None
        version = snapshot["annotations"].get(ANNOTATION_VERSION) or "unknown"
        return f"restored {image} (model version {version}), {available}/{snapshot['replicas']} available"

    def remove_first_deployment(self, model_name: str) -> str:
        name = object_name(model_name)
        where = f"{self.api.namespace}/{name}"
        if self.keep_failed_first_deploy:
            return (
                f"kept Deployment and Service {where} for inspection (keep_failed_first_deploy); it was the "
                f"first deployment of {model_name!r}, so nothing served before it"
            )
        self.api.delete_deployment(name)
        self.api.delete_service(name)
        self.api.delete_disruption_budget(name)
        return (
            f"deleted Deployment and Service {where}: it was the first deployment of {model_name!r}, "
            "nothing served before it"
        )
