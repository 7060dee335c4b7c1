"""The ``kavach`` command (also ``python -m kavach``).

::

    kavach serve [--host 127.0.0.1] [--port 8000] [--database URL] [--base-path /api/kavach]
                 [--trusted-origin URL ...] [--timeout 30] [--fake-polar]
    kavach users create EMAIL [--name NAME] [--password-stdin] [--database URL]
    kavach migrate [--database URL]
    kavach polar trigger EVENT --to URL [--secret S] [--user ID] [--derivation D]
    kavach polar doctor [--webhook-url URL] [--api-url URL]

``serve`` reads ``POLAR_ACCESS_TOKEN``, ``POLAR_WEBHOOK_SECRET``, ``POLAR_SANDBOX`` (1/0),
``POLAR_ORGANIZATION_ID``, ``POLAR_API_URL``, ``KAVACH_DATABASE_URL`` and
``KAVACH_TRUSTED_ORIGINS`` (comma-separated); flags win over the environment. The Polar
plugin is configured only when both the token and the webhook secret are set.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO, cast

import attrs

from kavach.core import DEFAULT_BASE_PATH
from kavach.errors import ConfigurationError, EmailTakenError, InvalidInputError, KavachError

if TYPE_CHECKING:
    from kavach.core import Kavach
    from kavach.http.server import KavachHTTPServer

logger = logging.getLogger("kavach.cli")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class CliError(Exception):
    """A problem to report in one line on stderr (exit status 2)."""


@attrs.frozen
class PolarSettings:
    """The ``polar(...)`` arguments the environment gives. Secrets stay out of ``repr``."""

    access_token: str = attrs.field(repr=False)
    webhook_secret: str = attrs.field(repr=False)
    sandbox: bool = False
    organization_id: str | None = None
    base_url: str | None = None


@attrs.frozen
class ServeSettings:
    """Everything ``kavach serve`` runs with, after flags and environment are merged."""

    host: str
    port: int
    database: str | None
    base_path: str
    trusted_origins: tuple[str, ...]
    timeout: float
    polar: PolarSettings | None
    fake_polar: bool
    warnings: tuple[str, ...] = ()
    proxy_hops: int = 0


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _parse_bool(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CliError(f"{name} must be 1 or 0, not {value!r}")


def polar_settings(environ: Mapping[str, str]) -> tuple[PolarSettings | None, tuple[str, ...]]:
    """The Polar settings from the environment (``None`` unless token and secret are both
    set) and warnings about a half-configured plugin."""
    token = _env(environ, "POLAR_ACCESS_TOKEN")
    secret = _env(environ, "POLAR_WEBHOOK_SECRET")
    if token is None or secret is None:
        if token is not None or secret is not None:
            missing = "POLAR_WEBHOOK_SECRET" if token is not None else "POLAR_ACCESS_TOKEN"
            return None, (f"{missing} is not set: the Polar plugin stays off",)
        return None, ()
    return (
        PolarSettings(
            access_token=token,
            webhook_secret=secret,
            sandbox=_parse_bool(environ.get("POLAR_SANDBOX"), "POLAR_SANDBOX"),
            organization_id=_env(environ, "POLAR_ORGANIZATION_ID"),
            base_url=_env(environ, "POLAR_API_URL"),
        ),
        (),
    )


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeSettings:
    """Merge ``kavach serve`` flags with the environment (flags win)."""
    polar, warnings = polar_settings(environ)
    if args.trusted_origin:
        origins = tuple(args.trusted_origin)
    else:
        env_origins = environ.get("KAVACH_TRUSTED_ORIGINS", "")
        origins = tuple(o for o in (p.strip() for p in env_origins.split(",")) if o)
    return ServeSettings(
        host=args.host,
        port=args.port,
        database=args.database or _env(environ, "KAVACH_DATABASE_URL"),
        base_path=args.base_path,
        trusted_origins=origins,
        timeout=args.timeout,
        polar=polar,
        fake_polar=args.fake_polar,
        warnings=warnings,
        proxy_hops=_proxy_hops(args, environ),
    )


def _proxy_hops(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.proxy_hops is not None:
        hops: int = args.proxy_hops
        return hops
    raw = _env(environ, "KAVACH_PROXY_HOPS")
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise CliError(f"KAVACH_PROXY_HOPS must be a whole number, not {raw!r}") from None


def _database(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    database: str | None = args.database or _env(environ, "KAVACH_DATABASE_URL")
    return database


# -- serve ----------------------------------------------------------------------------


def _start_fake_polar(stack: contextlib.ExitStack) -> Any:
    """Start :class:`kavach.testing.FakePolar` (stopped when ``stack`` closes) and return it.

    Raises :class:`CliError` when the fake Polar is not available in this install.
    """
    try:
        from kavach.testing.fake_polar import FakePolar  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise CliError(
            "--fake-polar is not available yet: kavach.testing.fake_polar cannot be imported"
        ) from exc
    return stack.enter_context(FakePolar())


def _build_kavach(settings: ServeSettings, stack: contextlib.ExitStack) -> tuple[Kavach, Any]:
    """The ``Kavach`` to serve (closed with ``stack``) and the fake Polar, if started."""
    from kavach import create_kavach

    plugins: list[Any] = []
    polar_config = settings.polar
    fake = None
    if settings.fake_polar:
        fake = _start_fake_polar(stack)
        polar_config = PolarSettings(
            access_token="polar_oat_fake",  # noqa: S106 - FakePolar takes any token
            webhook_secret=fake.webhook_secret,
            base_url=fake.url,
        )
        logger.info("fake Polar at %s (product %s)", fake.url, fake.product_id)
    if polar_config is not None:
        from kavach.auth import polar

        plugins.append(
            polar(
                access_token=polar_config.access_token,
                webhook_secret=polar_config.webhook_secret,
                sandbox=polar_config.sandbox,
                organization_id=polar_config.organization_id,
                base_url=polar_config.base_url,
            )
        )
    kavach = create_kavach(
        settings.database,
        plugins=plugins,
        base_path=settings.base_path,
        trusted_origins=settings.trusted_origins,
        proxy_hops=settings.proxy_hops,
    )
    stack.callback(kavach.close)
    return kavach, fake


def _run_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from kavach.http.server import serve

    settings = serve_settings(args, environ)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in settings.warnings:
        logger.warning("%s", warning)
    with contextlib.ExitStack() as stack:
        kavach, fake = _build_kavach(settings, stack)
        polar_state = "on" if "polar" in kavach.plugins else "off"
        logger.info("store %s, Polar plugin %s", kavach.store.kind, polar_state)

        router = None
        if fake is not None:  # the offline demo page at /
            from kavach.http.demo import demo_router

            router = demo_router(kavach, fake.url, "polar_oat_fake")

        def ready(server: KavachHTTPServer) -> None:
            if fake is not None:  # the fake Polar delivers its webhooks to this server
                fake.add_webhook_endpoint(
                    server.url + kavach.config.base_path + "/auth/polar/webhook"
                )
                logger.info("offline demo at %s/", server.url)

        serve(
            kavach,
            settings.host,
            settings.port,
            timeout=settings.timeout,
            router=router,
            on_ready=ready,
        )
    return 0


# -- users, migrate ---------------------------------------------------------------------


def _read_password(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.password_stdin:
        return stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise CliError("the passwords do not match")
    return first


def _run_users_create(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: TextIO, stdout: TextIO
) -> int:
    from kavach import create_kavach

    password = _read_password(args, stdin)
    with create_kavach(_database(args, environ)) as kavach:
        try:
            user = kavach.users.create(args.email, password=password, name=args.name)
        except InvalidInputError as exc:
            raise CliError(f"{exc.field}: {exc}") from None
        except EmailTakenError:
            raise CliError(f"a user with email {args.email!r} already exists") from None
    print(f"created user {user.id} <{user.email}>", file=stdout)
    return 0


def _run_migrate(args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO) -> int:
    from kavach.stores import open_store

    store = open_store(_database(args, environ))
    try:
        print(f"{store.kind} schema version {store.schema_version()}", file=stdout)
    finally:
        store.close()
    return 0


# -- parser -----------------------------------------------------------------------------


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="store URL (memory://, sqlite:///kavach.db, postgresql://...); "
        "default $KAVACH_DATABASE_URL, else sqlite:///kavach.db",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``kavach`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kavach", description="kavach: email + password auth with Polar subscriptions."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the HTTP server",
        description="Serve the kavach routes. Polar is configured from POLAR_ACCESS_TOKEN, "
        "POLAR_WEBHOOK_SECRET, POLAR_SANDBOX, POLAR_ORGANIZATION_ID, POLAR_API_URL.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port, 0 for any (default 8000)")
    _add_database(serve)
    serve.add_argument(
        "--base-path", default=DEFAULT_BASE_PATH, help=f"route prefix (default {DEFAULT_BASE_PATH})"
    )
    serve.add_argument(
        "--trusted-origin",
        action="append",
        metavar="URL",
        help="an origin allowed for cookie requests and successUrl (repeatable; "
        "default $KAVACH_TRUSTED_ORIGINS, comma-separated)",
    )
    serve.add_argument(
        "--timeout", type=float, default=30.0, help="socket timeout in seconds (default 30)"
    )
    serve.add_argument(
        "--proxy-hops",
        type=int,
        default=None,
        metavar="N",
        help="trust X-Forwarded-For/-Proto/-Host from N reverse proxies in front "
        "(default $KAVACH_PROXY_HOPS, else 0: never trusted)",
    )
    serve.add_argument(
        "--fake-polar",
        action="store_true",
        help="run a local fake Polar beside the server and wire both together (offline)",
    )

    users = commands.add_parser("users", help="manage users")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    create = user_commands.add_parser("create", help="create a user (asks for the password)")
    create.add_argument("email")
    create.add_argument("--name", help="display name")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    _add_database(create)

    migrate = commands.add_parser(
        "migrate", help="create or upgrade the tables and print the schema version"
    )
    _add_database(migrate)

    from kavach.cli_polar import add_polar_commands  # kavach polar trigger|doctor|...

    add_polar_commands(commands)
    return parser


#: ``kavach``'s exit status when standard output was closed early (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141
#: ``kavach``'s exit status when writing standard output failed otherwise (a full disk,
#: an I/O error): ``EX_IOERR`` of ``sysexits.h``.
EXIT_OUTPUT_ERROR = 74


class OutputError(Exception):
    """Writing standard output failed, other than by a closed pipe."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause.strerror or str(cause) or type(cause).__name__)
        self.cause = cause


class _Output:
    """Standard output as the commands see it: an ``OSError`` writing it becomes an
    :class:`OutputError` (a closed pipe stays a ``BrokenPipeError``), so :func:`main`
    tells it from an ``OSError`` of anything else."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _run(args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO, stdout: TextIO) -> int:
    if args.command == "serve":
        return _run_serve(args, env)
    if args.command == "users":
        return _run_users_create(args, env, stdin, stdout)
    if args.command == "polar":
        from kavach.cli_polar import run_polar

        return run_polar(args, env, stdout)
    return _run_migrate(args, env, stdout)


def _silence(stream: TextIO) -> None:
    """After a broken pipe or a failed write: point ``stream``'s descriptor at /dev/null,
    so the flush at interpreter exit does not fail again (the recipe of Python's
    ``signal`` docs)."""
    import os

    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _error(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr may be broken too: the status still tells
        print(f"kavach: error: {message}", file=sys.stderr)


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run the ``kavach`` command; returns the exit status.

    Exit statuses: 0 success; 1 a check or delivery failed, or a ``KavachError``; 2 a
    usage or configuration error; 74 writing standard output failed (a full disk, an I/O
    error; one line on stderr); 130 interrupted; 141 standard output was closed early
    (``kavach ... | head``: the rest of the output is dropped quietly, as with SIGPIPE).
    """
    import os

    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    out = stdout or sys.stdout
    guarded = cast(TextIO, _Output(out))
    try:
        status = _run(args, env, stdin or sys.stdin, guarded)
        guarded.flush()  # a closed pipe or a full disk shows here, not at exit
        return status
    except BrokenPipeError:
        _silence(out)
        return EXIT_BROKEN_PIPE
    except OutputError as exc:
        _silence(out)  # what is still buffered would fail again at exit
        _error(f"cannot write standard output: {exc}")
        return EXIT_OUTPUT_ERROR
    except (CliError, ConfigurationError) as exc:
        _error(str(exc))
        return 2
    except KavachError as exc:
        _error(f"{type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:  # before the server ran (serve() itself exits cleanly)
        return 130
