"""``loxilb-controller``: Services of type LoadBalancer to rules on every LB node's agent."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

import click

from loxicmd.secretfile import read_secret

from .agents import Agents, Failure
from .ipam import IpPool, NoAddress, parse_cidrs
from .kube import Cluster, Informer, wait_synced
from .service import (
    LB_CLASS,
    MODES,
    SERVICE_NAME_LABEL,
    ServiceRefused,
    key_of,
    options_of,
    rule_name,
    rules_for,
    wants_lb,
)

log = logging.getLogger("loxilb-controller")

RETRY_MIN_S, RETRY_MAX_S = 2.0, 60.0


class Controller:
    def __init__(self, cluster: Cluster, agents: Agents, pool: IpPool, *,
                 lb_class: str = LB_CLASS, default_class: bool = False, bgp: bool = False,
                 default_mode: int = 0, resync_s: float = 15.0) -> None:
        self.cluster, self.agents, self.pool = cluster, agents, pool
        self.lb_class, self.default_class = lb_class, default_class
        self.bgp, self.default_mode, self.resync_s = bgp, default_mode, resync_s
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._stopping = False
        self._warned: dict[str, str] = {}  # service -> the last warning raised
        self._slice_owner: dict[str, str] = {}  # slice key -> service key (for deletions)
        self._retry: dict[str, tuple[float, float]] = {}  # service -> (when, next delay)
        self.services = cluster.services(self._service_changed)
        self.slices = cluster.endpoint_slices(self._slice_changed)

    # -- what the informers say ------------------------------------------------------
    def _enqueue(self, key: str) -> None:
        with self._cond:
            self._pending.add(key)
            self._retry.pop(key, None)  # a change: no waiting out a back-off
            self._cond.notify()

    def _service_changed(self, key: str, obj: dict[str, Any] | None) -> None:
        self._enqueue(key)

    def _slice_changed(self, key: str, obj: dict[str, Any] | None) -> None:
        owner = self._slice_owner.pop(key, None)
        if owner is not None:
            self._enqueue(owner)
        if obj is not None:
            service = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if service:
                owner = f"{key.split('/', 1)[0]}/{service}"
                self._slice_owner[key] = owner
                self._enqueue(owner)

    # -- the work --------------------------------------------------------------------
    def run(self) -> None:
        self.services.start()
        self.slices.start()
        while not wait_synced([self.services, self.slices], 30):
            log.warning("the Kubernetes API has not answered the first lists yet; waiting")
            if self._stopping:
                return
        self._reserve_known()
        next_resync = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= next_resync:
                self.resync()
                next_resync = time.monotonic() + self.resync_s
                continue
            with self._cond:
                due = [k for k, (when, _) in self._retry.items() if when <= now]
                self._pending.update(due)
                if not self._pending and not self._stopping:
                    wake = min([next_resync, *(w for w, _ in self._retry.values())])
                    self._cond.wait(max(0.05, wake - now))
                    continue
                keys, self._pending = self._pending, set()
            for key in sorted(keys):
                ok = self.reconcile(key)
                with self._cond:  # a failure is tried again, each time later
                    delay = self._retry.pop(key, (0.0, RETRY_MIN_S))[1]
                    if not ok:
                        self._retry[key] = (time.monotonic() + delay,
                                            min(2 * delay, RETRY_MAX_S))

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.services.stop()
        self.slices.stop()

    def _reserve_known(self) -> None:
        """The addresses the Services' statuses already hold (from the pools or asked for)
        are theirs: reserved before anything new is handed out (the controller keeps no
        file)."""
        for key, svc in sorted(self.services.objects.items()):
            if not wants_lb(svc, self.lb_class, self.default_class):
                continue
            for ingress in ((svc.get("status") or {}).get("loadBalancer") or {}).get(
                    "ingress") or []:
                ip = ingress.get("ip")
                if ip:
                    try:
                        self.pool.reserve(key, ip)
                    except NoAddress as exc:
                        log.warning("%s: %s", key, exc)

    def _slices_of(self, key: str) -> list[dict[str, Any]]:
        namespace, _, name = key.partition("/")
        return [s for k, s in list(self.slices.objects.items())
                if k.partition("/")[0] == namespace and ((s.get("metadata") or {}).get(
                    "labels") or {}).get(SERVICE_NAME_LABEL) == name]

    def _warn(self, svc: dict[str, Any], reason: str, message: str) -> None:
        key = key_of(svc)
        if self._warned.get(key) != message:
            log.warning("%s: %s", key, message)
            self.cluster.warn(svc, reason, message)
            self._warned[key] = message

    def _desired(self, key: str, svc: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """The Service's address and rules; ServiceRefused / NoAddress say why not."""
        options = options_of(svc, self.default_mode)
        if options.static_ip:
            self.pool.reserve(key, options.static_ip)
            address = options.static_ip
        else:
            have = self.pool.address_of(key)
            if have is not None and not self.pool.in_pool(have):  # it asked for one before
                self.pool.release(key)
            address = self.pool.allocate(key)
        return address, rules_for(svc, self._slices_of(key), address, options, self.bgp)

    def reconcile(self, key: str) -> bool:
        """One Service: its rules on every agent, its status; False to try again."""
        svc = self.services.objects.get(key)
        name = rule_name(key)
        if svc is None or not wants_lb(svc, self.lb_class, self.default_class):
            self.pool.release(key)
            self._warned.pop(key, None)
            return not self.agents.apply([], {name})
        try:
            address, rules = self._desired(key, svc)
        except ServiceRefused as exc:  # what it has stays: a bad edit changes nothing
            self._warn(svc, "InvalidService", str(exc))
            return True
        except NoAddress as exc:
            self._warn(svc, "NoExternalIP", str(exc))
            return False
        return self._report(svc, address, self.agents.apply(rules, {name}))

    def _report(self, svc: dict[str, Any], address: str, failures: list[Failure]) -> bool:
        """A Service's outcome: warnings, and its status once an agent holds its rules."""
        for failure in failures:
            self._warn(svc, "AgentRefused" if failure.rule else "AgentUnreachable",
                       f"agent {failure.agent}: {failure.message}")
        if len({f.agent for f in failures}) < len(self.agents.clients):
            self._set_status(svc, address)
        if not failures:
            self._warned.pop(key_of(svc), None)
        return not failures

    def _set_status(self, svc: dict[str, Any], address: str) -> None:
        have = [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {})
                .get("ingress") or []]
        if have != [address]:
            meta = svc["metadata"]
            self.cluster.set_ingress(meta["namespace"], meta["name"], [address])
            log.info("%s: external IP %s", key_of(svc), address)

    def resync(self) -> None:
        """Every Service again, and every agent rid of rules no Service wants (a Service
        deleted while the controller was away) or filled again (an agent restarted empty).
        Services that ask for an address go first: a new one from the pools never takes
        an address a Service asked for."""
        services = {k: s for k, s in list(self.services.objects.items())
                    if wants_lb(s, self.lb_class, self.default_class)}
        for key in set(self.pool.owners()) - set(services):
            self.pool.release(key)

        def asks(key: str) -> bool:
            try:
                return bool(options_of(services[key]).static_ip)
            except ServiceRefused:
                return False
        wanted: list[dict[str, Any]] = []
        addresses: dict[str, str] = {}
        spare: set[str] = set()  # Services refused now keep what they have
        for key in sorted(services, key=lambda k: (not asks(k), k)):
            svc = services[key]
            try:
                addresses[key], rules = self._desired(key, svc)
            except ServiceRefused as exc:
                self._warn(svc, "InvalidService", str(exc))
                spare.add(rule_name(key))
                continue
            except NoAddress as exc:
                self._warn(svc, "NoExternalIP", str(exc))
                spare.add(rule_name(key))
                continue
            wanted += rules
        failures = self.agents.apply(wanted, None, spare=spare)
        by_rule: dict[str, list[Failure]] = {}
        for failure in failures:
            if failure.rule:
                by_rule.setdefault(failure.rule, []).append(failure)
        whole = [f for f in failures if not f.rule]  # an agent that failed as a whole
        for key, address in addresses.items():
            ok = self._report(services[key], address, whole + by_rule.get(rule_name(key), []))
            with self._cond:
                if ok:
                    self._retry.pop(key, None)
                elif key not in self._retry:
                    self._retry[key] = (time.monotonic() + RETRY_MIN_S, 2 * RETRY_MIN_S)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              envvar="KUBECONFIG", help="Kubeconfig file (default: the in-cluster account).")
@click.option("--loxi-url", "--loxiURL", "loxi_url", required=True, envvar="LOXI_URL",
              metavar="URL[,URL...]", help="Every LB node's agent: http://HOST:11111,...")
@click.option("--loxi-token", envvar="LOXILBD_TOKEN", default=None,
              help="The agents' API token (env LOXILBD_TOKEN).")
@click.option("--loxi-token-file", type=click.Path(dir_okay=False), default=None,
              help="The agents' API token, from this file (mode 0600).")
@click.option("--loxi-cacert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="For https agent URLs: the CA certificate (PEM) that signed theirs.")
@click.option("--external-cidr", "--externalCIDR", "external_cidr", required=True,
              metavar="CIDR[,CIDR...]", help="Where Services' external IPs come from.")
@click.option("--lb-class", default=LB_CLASS, show_default=True,
              help="The Services' spec.loadBalancerClass this controller serves.")
@click.option("--default-class", is_flag=True,
              help="Also serve Services without a loadBalancerClass.")
@click.option("--lb-mode", type=click.Choice(["default", "onearm", "fullnat"]),
              default="default", show_default=True,
              help="NAT mode of Services without a loxilb.io/lbmode annotation.")
@click.option("--bgp", "--setBGP", "bgp", is_flag=True,
              help="Rules announce their VIP with BGP (the agents' BGP settings).")
@click.option("--resync", type=click.FloatRange(1, 3600), default=15.0, show_default=True,
              help="Seconds between full passes over every Service and every agent.")
@click.option("--agent-timeout", type=click.FloatRange(0.5, 120), default=5.0,
              show_default=True, help="Seconds an agent has to answer a request.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def cli(kubeconfig: str | None, loxi_url: str, loxi_token: str | None,
        loxi_token_file: str | None, loxi_cacert: str | None, external_cidr: str,
        lb_class: str, default_class: bool, lb_mode: str, bgp: bool, resync: float,
        agent_timeout: float, log_level: str) -> None:
    """Serve Kubernetes Services of type LoadBalancer with the LB nodes' agents."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pool = IpPool(parse_cidrs(external_cidr))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--external-cidr") from None
    if loxi_token_file is not None:
        try:
            loxi_token = read_secret(loxi_token_file).decode()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise click.BadParameter(str(exc), param_hint="--loxi-token-file") from None
    try:
        agents = Agents([u.strip() for u in loxi_url.split(",") if u.strip()], loxi_token,
                        agent_timeout, loxi_cacert)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--loxi-url") from None
    if not agents.clients:
        raise click.BadParameter(f"{loxi_url!r} names no agent", param_hint="--loxi-url")
    try:
        cluster = Cluster(kubeconfig)
    except Exception as exc:  # the client's own errors: no file, no in-cluster account
        raise click.ClickException(f"cannot reach the Kubernetes API: {exc}") from None
    controller = Controller(cluster, agents, pool, lb_class=lb_class,
                            default_class=default_class, bgp=bgp,
                            default_mode=MODES[lb_mode], resync_s=resync)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: controller.stop())
    log.info("serving Services of class %s%s with %d agent(s), external IPs from %s",
             lb_class, " (and without a class)" if default_class else "",
             len(agents.clients), external_cidr)
    controller.run()
    log.info("stopped")


def main() -> None:
    cli(prog_name="loxilb-controller")


if __name__ == "__main__":
    main()


__all__ = ["Controller", "Informer", "cli", "main"]
