"""``qlp keys``: create and inspect the Ed25519 key that signs adapters."""

from __future__ import annotations

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.errors import QLPError
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.keyring import revoke_key, rotate_keys, trusted_keys
from qlp_ray.registry.signing import init_keys, key_info, trusted_public_keys

app = typer.Typer(help="Ed25519 signing keys for adapter manifests.", no_args_is_help=True)


@app.command("init")
def init(
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair."),
) -> None:
    """Create a new signing key pair under <home>/keys."""

    try:
        info = init_keys(get_config().paths.keys, force=force)
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"created signing key [bold]{info.key_id}[/]")
    console.print(f"  private key: {info.private_key_path} (mode 0600)", soft_wrap=True)
    console.print(f"  public key:  {info.public_key_path}", soft_wrap=True)


@app.command("show")
def show() -> None:
    """Print the signing key id, its files and the extra trusted keys."""

    cfg = get_config()
    try:
        info = key_info(cfg.paths.keys)
        trusted = trusted_public_keys(cfg)
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"key id:      [bold]{info.key_id}[/]")
    console.print(f"private key: {info.private_key_path}", soft_wrap=True)
    console.print(f"public key:  {info.public_key_path}", soft_wrap=True)
    console.print(f"trusted key ids: {', '.join(sorted(trusted))}")


@app.command("rotate")
def rotate() -> None:
    """Make a new signing key; the old public key stays trusted (revoke it separately)."""

    cfg = get_config()
    try:
        old, new = rotate_keys(cfg, audit_for(cfg))
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"signing key rotated: [bold]{old}[/] -> [bold]{new}[/]")
    console.print(f"{old} stays trusted; `qlp keys revoke {old}` drops it")


@app.command("trusted")
def trusted() -> None:
    """List every public key verification trusts and where it comes from."""

    try:
        keys = trusted_keys(get_config())
    except QLPError as exc:
        fail(str(exc))
        return
    for k in keys:
        console.print(f"{k.key_id}  {k.role:<10} {k.path}", soft_wrap=True)


@app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="Id of a retired key.")) -> None:
    """Stop trusting a retired key: adapters it signed are refused from now on."""

    cfg = get_config()
    try:
        path = revoke_key(cfg, key_id, audit_for(cfg))
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"revoked {key_id} (removed {path})", soft_wrap=True)
