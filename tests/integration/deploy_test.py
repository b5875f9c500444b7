#!/usr/bin/env python3
"""Checks of deploy/ (issue: observability and deployment): the Kubernetes manifests carry what a
GPU StatefulSet needs, the systemd unit is hardened and stops the daemon gracefully, the
container image definition is complete, and the sample config file starts the real daemon
(every key a real flag; the command line overriding the file).

  QLORAD_BINARY=build/server/qlorad python3 tests/integration/deploy_test.py
"""
import configparser
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

try:
    import yaml
except ImportError:  # an interpreter outside Debian's (pyenv): use the apt package python3-yaml
    sys.path.append("/usr/lib/python3/dist-packages")
    import yaml

REPO = Path(__file__).resolve().parent.parent.parent
DEPLOY = REPO / "deploy"
BINARY = os.environ.get("QLORAD_BINARY", "")
if not BINARY or not os.access(BINARY, os.X_OK):
    print("deploy_test: skipped, QLORAD_BINARY is unset or not executable")
    sys.exit(77)


def daemon_flags():
    out = subprocess.run([BINARY, "--helpfull"], capture_output=True, text=True)
    return set(re.findall(r"^\s+--(\w+) ", out.stdout + out.stderr, re.M))


def config_keys(text):
    keys = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line.split("=", 1)[0].strip().replace("-", "_"))
    return keys


class KubernetesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "qlorad.yaml").read_text()))
        cls.by_kind = {}
        for d in docs:
            cls.by_kind.setdefault(d["kind"], []).append(d)

    def test_statefulset_with_a_volume_per_pod_and_a_gpu(self):
        (sts,) = self.by_kind["StatefulSet"]
        spec = sts["spec"]
        claims = spec["volumeClaimTemplates"]
        self.assertEqual(claims[0]["metadata"]["name"], "data")
        self.assertIn("ReadWriteOnce", claims[0]["spec"]["accessModes"])
        (c,) = spec["template"]["spec"]["containers"]
        self.assertEqual(c["resources"]["requests"]["nvidia.com/gpu"], 1)
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        self.assertEqual(mounts["data"], "/var/lib/qlorad")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            self.assertEqual(c[probe]["grpc"]["port"], ports["grpc"], probe)
        # A long start (a storage layout move) must not end in liveness restarts: the startup
        # probe allows far longer than liveness alone would (initial delay + failures x period).
        startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        self.assertGreaterEqual(startup, 1200)
        self.assertGreaterEqual(spec["template"]["spec"]["terminationGracePeriodSeconds"], 60)

    def test_services_and_monitor(self):
        (sts,) = self.by_kind["StatefulSet"]
        services = {s["metadata"]["name"]: s for s in self.by_kind["Service"]}
        headless = services[sts["spec"]["serviceName"]]
        self.assertEqual(headless["spec"]["clusterIP"], "None")
        selector = sts["spec"]["selector"]["matchLabels"]
        for s in services.values():
            self.assertEqual(s["spec"]["selector"], selector)
        grpc_services = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
        self.assertTrue(any(p["name"] == "grpc" for s in grpc_services for p in s["spec"]["ports"]))
        (mon,) = self.by_kind["ServiceMonitor"]
        self.assertEqual(mon["apiVersion"], "monitoring.coreos.com/v1")
        port = mon["spec"]["endpoints"][0]["port"]
        self.assertIn(port, [p["name"] for p in headless["spec"]["ports"]])
        self.assertEqual(mon["spec"]["endpoints"][0]["path"], "/metrics")
        # The alerts and the dashboard select job="qlorad": the job label must come from the
        # Services' app.kubernetes.io/name (the Operator's default is the Service's name).
        label = mon["spec"]["jobLabel"]
        self.assertEqual(headless["metadata"]["labels"][label], "qlorad")

    def test_prometheus_rule_holds_the_alerts(self):
        (rule,) = self.by_kind["PrometheusRule"]
        alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        self.assertEqual(rule["spec"]["groups"], alerts["groups"])

    def test_configmap_keys_are_daemon_flags(self):
        (cm,) = self.by_kind["ConfigMap"]
        flags = daemon_flags()
        for key in config_keys(cm["data"]["qlorad.conf"]):
            self.assertIn(key, flags)


class HostTest(unittest.TestCase):
    def test_systemd_unit(self):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str
        unit.read_string((DEPLOY / "systemd" / "qlorad.service").read_text())
        svc = unit["Service"]
        self.assertIn("--config /etc/qlorad/qlorad.conf", svc["ExecStart"])
        self.assertEqual(svc["KillSignal"], "SIGTERM")
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("PrivateTmp", "yes"), ("User", "qlorad"),
                           ("StateDirectory", "qlorad"), ("DevicePolicy", "closed")):
            self.assertEqual(svc.get(key), value, key)
        self.assertEqual(unit["Install"]["WantedBy"], "multi-user.target")
        if shutil.which("systemd-analyze"):
            r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                                str(DEPLOY / "systemd" / "qlorad.service")],
                               capture_output=True, text=True)
            # A missing /usr/bin/qlorad on the test machine is expected; syntax errors are not.
            errors = [l for l in r.stderr.splitlines() if "qlorad.service" in l
                      and "Command /usr/bin/qlorad" not in l and "is not executable" not in l]
            self.assertEqual(errors, [])

    def test_container_image(self):
        text = (DEPLOY / "container" / "Containerfile").read_text()
        self.assertRegex(text, r"(?m)^FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime-")
        self.assertRegex(text, r"(?m)^EXPOSE 50051 9477$")
        self.assertRegex(text, r"(?m)^STOPSIGNAL SIGTERM$")
        self.assertRegex(text, r"(?m)^USER qlorad$")
        for src in re.findall(r"(?m)^COPY (deploy/\S+)", text):
            self.assertTrue((REPO / src).exists(), src)

    def start_and_stop(self, tmp, args):
        """Starts the daemon with `args` (a tenants file in `tmp`, a port file there), waits for
        its port, stops it with SIGTERM (exit 0) and returns its log."""
        (tmp / "tenants.json").write_text(
            '{"tenants": [{"name": "ops", "key_sha256": "' + "0" * 64 + '", "admin": true}]}')
        with open(tmp / "log", "wb") as log:
            proc = subprocess.Popen(
                [BINARY, *args, "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
                 "--devices=cpu:0", f"--port-file={tmp / 'port'}"],
                stdout=log, stderr=log)
            deadline = time.time() + 30
            while time.time() < deadline and not (tmp / "port").exists():
                self.assertIsNone(proc.poll(), (tmp / "log").read_text())
                time.sleep(0.1)
            self.assertTrue((tmp / "port").exists(), (tmp / "log").read_text())
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(30), 0)
        return (tmp / "log").read_text()

    def test_sample_config_starts_the_daemon_and_the_command_line_wins(self):
        text = (DEPLOY / "config" / "qlorad.conf").read_text()
        flags = daemon_flags()
        for key in config_keys(text):
            self.assertIn(key, flags)
        tmp = Path(tempfile.mkdtemp(prefix="qlorad-deploy-"))
        try:
            started = self.start_and_stop(tmp, [
                "--config", str(DEPLOY / "config" / "qlorad.conf"),
                f"--data-dir={tmp / 'data'}", f"--tenants={tmp / 'tenants.json'}"])
            # The command line's listen address, not the file's.
            self.assertIn("127.0.0.1:0", started)
            self.assertNotIn("0.0.0.0:50051", started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_a_hash_inside_a_config_value_is_the_values(self):
        """'#' starts a comment at the start of a line or after a space; inside a value (a
        path) it is the value's. The data folder 'data#1' used to be cut to 'data'."""
        tmp = Path(tempfile.mkdtemp(prefix="qlorad-deploy-"))
        try:
            (tmp / "qlorad.conf").write_text(
                "# a comment line\n"
                f"data-dir = {tmp / 'data#1'}   # a comment after a space\n"
                f"tenants = {tmp / 'tenants.json'}\n")
            log = self.start_and_stop(tmp, ["--config", str(tmp / "qlorad.conf")])
            self.assertTrue((tmp / "data#1").is_dir(), log)
            self.assertFalse((tmp / "data").exists())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    unittest.main()
