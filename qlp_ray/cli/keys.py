"""``qlp keys``: create and inspect the Ed25519 key that signs adapters."""

from __future__ import annotations

import time

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core import api_keys
from qlp_ray.core.errors import QLPError
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.keyring import revoke_key, rotate_keys, trusted_keys
from qlp_ray.registry.signing import init_keys, key_info, trusted_public_keys
from qlp_ray.registry.store import Registry

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
        Registry(cfg).storage.bump_generation()  # gateways re-list at once: its adapters go
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"revoked {key_id} (removed {path})", soft_wrap=True)


api = typer.Typer(
    help="API keys with roles (user, trainer, reviewer, admin), stored hashed in "
    "<home>/keys/api_keys.json.",
    no_args_is_help=True,
)
app.add_typer(api, name="api")


def _audit(cfg: object, key_id: str, role: str, action: str) -> None:
    audit = audit_for(cfg)  # type: ignore[arg-type]
    if audit is not None:
        audit.record("key_rotate", None, None, api_key=key_id, role=role, action=action)


@api.command("create")
def api_create(
    role: str = typer.Option(..., "--role", help="user, trainer, reviewer or admin."),
    name: str = typer.Option("", "--name", help="A label to recognise the key by."),
) -> None:
    """Create an API key; it is printed once (only its SHA-256 is kept)."""
    cfg = get_config()
    try:
        key, rec = api_keys.create_key(api_keys.key_file(cfg.paths.keys), role, name)
    except QLPError as exc:
        fail(str(exc))
        return
    _audit(cfg, rec.key_id, role, "create")
    console.print(f"created {role} key [bold]{rec.key_id}[/] (shown once, store it now):")
    print(key)


@api.command("list")
def api_list() -> None:
    """List API keys: id, role, name, created, revoked (never the keys)."""
    cfg = get_config()
    try:
        keys = api_keys.load_keys(api_keys.key_file(cfg.paths.keys))
    except QLPError as exc:
        fail(str(exc))
        return
    for k in keys:
        state = "revoked" if k.revoked_at is not None else "active"
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.created_at))
        console.print(f"{k.key_id}  {k.role:<8} {state:<8} {created}  {k.name}", soft_wrap=True)


@api.command("revoke")
def api_revoke(key_id: str = typer.Argument(..., help="Id from `qlp keys api list`.")) -> None:
    """Revoke an API key: running gateways refuse it at its next request."""
    cfg = get_config()
    try:
        rec = api_keys.revoke_key(api_keys.key_file(cfg.paths.keys), key_id)
    except QLPError as exc:
        fail(str(exc))
        return
    _audit(cfg, key_id, rec.role, "revoke")
    console.print(f"revoked API key {key_id} ({rec.role})")
