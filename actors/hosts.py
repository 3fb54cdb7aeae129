"""A node of a cluster across hosts: what `leaderless node start` checks and writes before the node runs.

    plan = plan_start("a2", "/var/lib/leaderless", listen="0.0.0.0:7001", advertise="10.0.0.2:7001",
                      join="10.0.0.1:7001,10.0.0.3:7001")
    plan.commit()                      # DIR/cluster.json (and, for a new cluster, DIR/secret)
    node.run(plan.name, plan.data_dir, join=plan.join, listen=plan.listen)

One command per host, run the same way every time:

- **new cluster** (no cluster in DIR, no ``--join``): NAME is its first member, with the
  cluster's n, r and w (``--n/--r/--w``, default 3/2/2) and a new secret in DIR/secret
  (mode 0600) unless one is there already.
- **join** (no cluster in DIR, ``--join SEEDS``): DIR/secret must hold a copy of the cluster's
  secret; the first seed that answers gives the cluster's configuration and members; NAME
  must not be one of them. The node then asks a member to add it to the ring.
- **restart** (DIR/cluster.json names NAME): from what DIR holds (the cluster's settings and the
  members and addresses the node saved), whether or not a seed answers. A seed that does
  answer is checked (same secret, same cluster) and tells the members' current addresses.
  A new ``--listen``/``--advertise`` moves the node: peers and clients learn it by gossip.

Every check runs before anything is written: a bad input (a wrong or missing secret, no seed
answering, a name taken, a data dir of another cluster, an address that cannot be bound or
advertised) raises a ``LeaderlessError`` with one line to show, and DIR is left as it was.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import Client, discover
from .config import (
    CONFIG_FILE,
    SECRET_FILE,
    ClusterConfig,
    ensure_secret,
    holds_cluster,
    load_secret,
    parse_address,
    parse_seeds,
)
from .errors import (
    AuthenticationFailed,
    ClusterUnavailable,
    InvalidRequest,
    LeaderlessError,
)

log = logging.getLogger(__name__)

GOSSIP_INTERVAL = 0.2
"""Gossip period of a cluster made by ``node start`` (seconds). With phi accrual at its threshold of 8
a silent member is convicted after about 8 x 0.2 / log10(e) = 3.7 s (0.5 s, the library default,
would take 9 s); a gossip message of a few members is a few hundred bytes, 5 a second per node."""
SEED_TIMEOUT = 3.0
"""Seconds one seed has to answer a restarting node's check (a seed that is down costs at most this)."""
DEFAULT_NRW: tuple[int, int | str, int | str] = (3, 2, 2)


@dataclass
class StartPlan:
    """What ``node start`` will do: the configuration to save, the address to bind, whether to join."""
    name: str
    data_dir: Path
    kind: str                                  # "new", "join" or "restart"
    config: ClusterConfig
    listen: tuple[str, int]                    # the address to bind
    join: bool                                 # ask a member to add this node to the ring (if not in it)
    write_config: bool = True
    seed: str | None = None                    # the seed that answered, if any

    @property
    def address(self) -> tuple[str, int]:
        """The address peers and clients use (advertised)."""
        return self.config.nodes[self.name]

    def commit(self) -> None:
        """Write what the start needs: DIR, a new cluster's secret (0600, unless one is there), cluster.json."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "new":
            ensure_secret(self.data_dir)
        if self.write_config:
            self.config.save(self.data_dir)

    def summary(self) -> str:
        host, port = self.address
        bind = "" if self.listen == self.address else f" (bound to {self.listen[0]}:{self.listen[1]})"
        what = {"new": f"starting a new cluster (n={self.config.n}, r={self.config.r}, w={self.config.w}, "
                       f"secret in {self.data_dir / SECRET_FILE})",
                "join": f"joining through {self.seed}",
                "restart": "restarting from " + (f"{self.data_dir / CONFIG_FILE}; seed {self.seed} answered"
                                                 if self.seed else f"{self.data_dir / CONFIG_FILE}")}[self.kind]
        return f"{self.name} listening on {host}:{port}{bind}: {what}"


def plan_start(name: str, data_dir: str | os.PathLike[str], *, listen: str | None = None,
               advertise: str | None = None, join: str | None = None, n: int | None = None,
               r: int | str | None = None, w: int | str | None = None) -> StartPlan:
    """Check everything ``node start`` was given against DIR and the seeds, writing nothing."""
    _check_name(name)
    bind = parse_address(listen, "--listen") if listen else None
    advertised = parse_address(advertise, "--advertise") if advertise else None
    if advertised is not None and _wildcard(advertised[0]):
        raise InvalidRequest(f"--advertise {advertise} is not an address peers can reach: give this host's "
                             "address on the network its peers use")
    if bind is not None and _wildcard(bind[0]) and advertised is None:
        raise InvalidRequest(f"--listen {listen} binds every interface, and peers cannot reach {bind[0]}: add "
                             f"--advertise HOST:{bind[1]} with this host's address on the network its peers use")
    seeds = parse_seeds(join, "--join seed") if join is not None else None
    root = Path(data_dir)
    if (root / CONFIG_FILE).exists():
        return _restart(name, root, bind, advertised, seeds, (n, r, w))
    if holds_cluster(root):
        raise ClusterUnavailable(f"{root} holds a node's store but no {CONFIG_FILE}: it is not a data dir this "
                                 "command made; give the node an empty data dir")
    if seeds is None:
        return _new(name, root, bind, advertised, (n, r, w))
    return _join(name, root, bind, advertised, seeds, (n, r, w))


# --- the three cases ---------------------------------------------------------------------------

def _new(name: str, root: Path, bind: tuple[str, int] | None, advertised: tuple[str, int] | None,
         nrw: tuple[Any, Any, Any]) -> StartPlan:
    if bind is None and advertised is None:
        raise InvalidRequest(f"no cluster in {root}: start a new one with --listen HOST:PORT (and --n/--r/--w), "
                             "or join one with --join SEED_HOST:PORT")
    if (root / SECRET_FILE).exists():
        load_secret(root)                  # a secret put there beforehand must be one nodes accept
    n, r, w = (given if given is not None else default for given, default in zip(nrw, DEFAULT_NRW))
    address = advertised or bind
    assert address is not None
    listen = bind or address
    config = ClusterConfig(nodes={name: address}, n=n, r=r, w=w, ring_nodes=[name], gossip_interval=GOSSIP_INTERVAL,
                           cluster_id=uuid.uuid4().hex)
    config.validate(growing=True)
    _check_bindable(listen)
    return StartPlan(name, root, "new", config, listen, join=False)


def _join(name: str, root: Path, bind: tuple[str, int] | None, advertised: tuple[str, int] | None,
          seeds: list[tuple[str, int]], nrw: tuple[Any, Any, Any]) -> StartPlan:
    if not os.path.lexists(root / SECRET_FILE):
        raise ClusterUnavailable(f"no cluster secret in {root} (missing {SECRET_FILE}): copy the cluster's secret "
                                 f"file from a member's data dir to {root / SECRET_FILE} and chmod 600 it")
    secret = load_secret(root)
    seed, body, members = _ask_seeds(seeds, secret)
    taken = members.get(name)
    if taken is not None:
        host, port, state = taken
        if state == "left":
            raise InvalidRequest(f"{name} was a member of this cluster and left: pick another --name")
        raise InvalidRequest(f"{name} is already a member of this cluster ({state}, at {host}:{port}): pick "
                             "another --name (to restart that node, use its own data dir)")
    body = {k: v for k, v in body.items() if k in {f.name for f in dataclasses.fields(ClusterConfig)}}
    body["nodes"] = {node: (str(a[0]), int(a[1])) for node, a in body["nodes"].items()}
    for node, (host, port, state) in members.items():
        if state != "left":
            body["nodes"][node] = (str(host), int(port))
    config = ClusterConfig(**body)
    _check_same_settings(config, nrw, f"the cluster at {seed}")
    if advertised or bind:
        address = advertised or bind
    else:                                  # the command before hosts: a free port on this machine
        address = ("127.0.0.1", _free_port("127.0.0.1"))
    assert address is not None
    listen = bind or address
    config.nodes[name] = address
    config.validate(growing=True)
    _check_bindable(listen)
    return StartPlan(name, root, "join", config, listen, join=True, seed=seed)


def _restart(name: str, root: Path, bind: tuple[str, int] | None, advertised: tuple[str, int] | None,
             seeds: list[tuple[str, int]] | None, nrw: tuple[Any, Any, Any]) -> StartPlan:
    config = ClusterConfig.load(root)
    if name not in config.nodes:
        raise ClusterUnavailable(f"{root} belongs to another node (its {CONFIG_FILE} names "
                                 f"{', '.join(sorted(config.nodes))}, not {name}): give {name} a data dir of its own "
                                 "(to add a node to a local cluster: `leaderless cluster join`)")
    secret = load_secret(root)
    _check_same_settings(config, nrw, f"this cluster ({root / CONFIG_FILE})")
    saved = config.nodes[name]
    address = advertised or bind or saved
    listen = bind or address
    write = address != saved
    seed = None
    if seeds:
        seed, members = _check_seeds(root, config, secret, seeds)
        for node, (host, port, state) in members.items():
            if node != name and state != "left" and config.nodes.get(node) != (host, port):
                config.nodes[node] = (host, port)       # where the members are now: the node starts from there
                write = True
    config.nodes[name] = address
    _check_bindable(listen)
    return StartPlan(name, root, "restart", config, listen, join=seeds is not None, write_config=write, seed=seed)


# --- seeds ---------------------------------------------------------------------------------------

def _ask_seeds(seeds: list[tuple[str, int]], secret: bytes
               ) -> tuple[str, dict[str, Any], dict[str, tuple[str, int, str]]]:
    """The first seed that answers: its address, the cluster's configuration and every member."""
    errors = []
    for host, port in seeds:
        try:
            members = _members_of(discover([(host, port)], secret))
            with Client({"seed": (host, port)}, secret, follow=False) as client:
                body = client.cluster_config("seed")
        except AuthenticationFailed as exc:
            raise AuthenticationFailed(f"{exc}; copy the cluster's secret file from a member's data dir") from None
        except LeaderlessError as exc:
            errors.append(str(exc).removeprefix("no seed could be reached: "))
            continue
        return f"{host}:{port}", body, members
    raise ClusterUnavailable("no seed answered (" + "; ".join(errors) + "): check --join and that a member runs")


def _check_seeds(root: Path, config: ClusterConfig, secret: bytes, seeds: list[tuple[str, int]]
                 ) -> tuple[str | None, dict[str, tuple[str, int, str]]]:
    """A restart's look at its seeds: the one that answers must be of this cluster; none answering is fine."""
    for host, port in seeds:
        try:
            answer = discover([(host, port)], secret, timeout=SEED_TIMEOUT)
        except AuthenticationFailed as exc:
            raise AuthenticationFailed(f"{exc}: {root} holds another cluster's node, or its secret is not this "
                                       "cluster's") from None
        except LeaderlessError as exc:
            log.info("seed %s:%d did not answer (%s)", host, port, exc)
            continue
        theirs = answer.get("cluster_id") or ""
        if theirs and config.cluster_id and theirs != config.cluster_id:
            raise ClusterUnavailable(f"{root} holds a node of another cluster than the seed {host}:{port}'s "
                                     f"(cluster {config.cluster_id[:8]}, the seed's {theirs[:8]}): give the node "
                                     "an empty data dir to join, or pick that cluster's seeds")
        return f"{host}:{port}", _members_of(answer)
    log.warning("no seed answered; starting from the members and addresses saved in %s", root)
    return None, {}


def _members_of(answer: Any) -> dict[str, tuple[str, int, str]]:
    try:
        return {str(node): (str(m[0]), int(m[1]), str(m[2])) for node, m in answer["members"].items()}
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ClusterUnavailable(f"a seed sent a malformed member list: {exc}") from None


# --- checks ----------------------------------------------------------------------------------------

def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name) or name in (".", ".."):
        raise InvalidRequest(f"--name {name!r}: 1 to 64 letters, digits, '-', '_' or '.'")


def _check_same_settings(config: ClusterConfig, nrw: tuple[Any, Any, Any], where: str) -> None:
    """n, r and w belong to the cluster (set when its first node started): a different one is refused."""
    for label, given, theirs in zip("nrw", nrw, (config.n, config.r, config.w)):
        if given is not None and str(given) != str(theirs):
            raise InvalidRequest(f"--{label} {given}: {where} has {label}={theirs}, set when its first node "
                                 f"started; leave --{label} out or pass --{label} {theirs}")


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host in ("", "*")


def _check_bindable(address: tuple[str, int]) -> None:
    """Refuse now (nothing written yet) an address this host cannot listen on."""
    if ":" in address[0]:
        raise InvalidRequest(f"{address[0]}: IPv6 addresses are not supported; give an IPv4 address or a host name")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise ClusterUnavailable(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc} (is a "
                                     "node already running there, or is that not this host's address?)") from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
