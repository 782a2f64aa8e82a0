"""`eventfn admin …`: deployment-wide tasks of the bootstrap administrator."""

from __future__ import annotations

from typing import Annotated

import typer

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.cli.client import as_json, out, registry, token

admin = typer.Typer(
    help="Deployment-wide tasks (the bootstrap administrator's token).", no_args_is_help=True
)
# A rotation re-seals every encrypted value of the deployment: let it take its time.
ROTATION_DEADLINE_SECONDS = 3600.0


def admin_token() -> str:
    """Return the bootstrap administrator's token: EVENTFN_TOKEN, else the one `up` stored."""
    return token(
        "admin_token",
        "no admin token: set EVENTFN_TOKEN to the deployment's bootstrap token "
        "(EVENTFN_BOOTSTRAP_TOKEN), or run where `make up` stored it",
    )


@admin.command("rotate-secret-key")
def rotate_secret_key(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """Re-seal every encrypted setting under a new data key and delete the old one.

    The platform keeps running: instances keep their settings, every registry replica follows
    the new key. Audited; the master key (EVENTFN_SECRET_KEY) is unchanged.
    """
    with registry() as r:
        done = r.RotateSecretKey(
            pb.RotateSecretKeyRequest(),
            metadata=(("authorization", f"Bearer {admin_token()}"),),
            timeout=ROTATION_DEADLINE_SECONDS,
        )
    if json_:
        as_json(done)
        return
    retired = ", ".join(done.retired_key_ids) or "none (values sealed by the master key)"
    out.print(
        f"Encrypted values are now sealed under data key {done.key_id}: "
        f"{done.resealed_setting_count} settings of {done.resealed_instance_count} instances "
        f"and {done.resealed_request_count} kept responses re-sealed. Deleted: {retired}.",
        highlight=False,
    )
