"""``finexp-federate``: start the processes of a real federation (Flower's SuperLink and SuperNodes).

    finexp-federate serve [--host 127.0.0.1] [--ssl-certfile ... --ssl-keyfile ... --ssl-ca-certfile ...]
    finexp-federate node --data bank_a.csv [--superlink 127.0.0.1:9092] [--name bank_a] [--root-certificates ca.pem]

``serve`` runs ``flower-superlink`` (ServerAppIo API on port 9091, Fleet API 9092 for the nodes, Control API 9093
for ``finexp-train federated.runtime=deployment federated.superlink=host:9093``). Without certificates it is
insecure, which is refused on any host but the loopback. ``node`` runs ``flower-supernode`` with the node config
``data=<file>``: its ClientApp trains on that file and nothing else. Both replace this process (``exec``), so the
PID you started is the Flower process's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _flower(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        sys.exit(f"finexp-federate: {command} not found; pip install 'finexp[federated]'")
    return path


def serve_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-superlink`` command line of ``serve``."""
    tls = [args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile]
    if any(tls) and not all(tls):
        sys.exit("finexp-federate serve: give all of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile, or none")
    if not any(tls) and args.host not in LOOPBACK:
        sys.exit(
            f"finexp-federate serve: --host {args.host} without TLS would send parameters unencrypted; "
            "give --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile (see the README) or serve on 127.0.0.1"
        )
    command = [
        _flower("flower-superlink"),
        f"--serverappio-api-address={args.host}:{args.serverappio_port}",
        f"--fleet-api-address={args.host}:{args.fleet_port}",
        f"--control-api-address={args.host}:{args.control_port}",
        "--disable-runtime-dependency-installation",  # the ServerApp is the installed finexp: nothing to install
    ]
    if all(tls):
        command += [f"--ssl-certfile={args.ssl_certfile}", f"--ssl-keyfile={args.ssl_keyfile}"]
        command += [f"--ssl-ca-certfile={args.ssl_ca_certfile}"]
    else:
        command.append("--insecure")
    if args.database:
        command.append(f"--database={args.database}")  # keeps runs across a SuperLink restart
    if args.enable_supernode_auth:
        command.append("--enable-supernode-auth")
    return command


def node_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-supernode`` command line of ``node``."""
    data = Path(args.data).resolve()
    if not data.is_file():
        sys.exit(f"finexp-federate node: --data {args.data} is not a file")
    name = args.name or data.stem
    for text in (str(data), name):
        if '"' in text or "\\" in text:
            sys.exit(f"finexp-federate node: {text!r} may not contain quotes or backslashes (node config is TOML)")
    command = [
        _flower("flower-supernode"),
        f"--superlink={args.superlink}",
        f"--clientappio-api-address={args.clientappio_address}",
        f'--node-config=data="{data}" name="{name}"',
    ]
    if args.root_certificates:
        command.append(f"--root-certificates={args.root_certificates}")
    else:
        host = args.superlink.rsplit(":", 1)[0].strip("[]")
        if host not in LOOPBACK:
            sys.exit(
                f"finexp-federate node: --superlink {args.superlink} without --root-certificates would be "
                "unencrypted; give the SuperLink's CA certificate"
            )
        command.append("--insecure")
    if args.auth_private_key:
        command += [f"--auth-supernode-private-key={args.auth_private_key}"]
    return command


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="finexp-federate", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start a SuperLink (the coordinator's end)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: TLS required)")
    serve.add_argument("--serverappio-port", type=int, default=9091, help="ServerAppIo API (the ServerApp)")
    serve.add_argument("--fleet-port", type=int, default=9092, help="Fleet API: where SuperNodes connect")
    serve.add_argument("--control-port", type=int, default=9093, help="Control API: where finexp-train submits")
    serve.add_argument("--ssl-certfile", help="server certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="server private key (PEM)")
    serve.add_argument("--ssl-ca-certfile", help="CA certificate (PEM) that signed the server certificate")
    serve.add_argument("--database", help="SQLite file for the SuperLink's state (default: in memory)")
    serve.add_argument("--enable-supernode-auth", action="store_true", help="only registered SuperNode keys")
    node = sub.add_parser("node", help="start a SuperNode on one institution's data")
    node.add_argument("--data", required=True, help="this institution's CSV/Parquet file (it never leaves)")
    node.add_argument("--superlink", default="127.0.0.1:9092", help="the SuperLink's Fleet API, host:port")
    node.add_argument("--name", help="the node's name in the records (default: the file's stem)")
    node.add_argument("--clientappio-address", default="127.0.0.1:9094", help="local ClientAppIo API address")
    node.add_argument("--root-certificates", help="the SuperLink's CA certificate (PEM); needed off loopback")
    node.add_argument("--auth-private-key", help="SuperNode authentication: this node's private key")
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    command = serve_command(args) if args.command == "serve" else node_command(args)
    print(" ".join(command), flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
