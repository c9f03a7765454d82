"""Helpers for virtnode's integration tests: the services the harness started (read from
its env file), agents run inside a libvirt host's namespaces, an oslo.messaging client,
the central database, libvirt, guest consoles and the test image.

Every integration test needs the harness: VN_TEST_ENV names its env file.  Without it the
test fails loudly (it never skips)."""

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import unittest
import urllib.request
import uuid as uuidlib

import libvirt
import psycopg2
import psycopg2.errors

from ports import free_port  # noqa: F401 (tests pick their ports here)


def _load_env():
    path = os.environ.get("VN_TEST_ENV")
    if not path or not os.path.exists(path):
        raise RuntimeError(
            "VN_TEST_ENV does not name the harness env file: run the integration tests through "
            "ctest (the 'services' fixture) or tests/run.sh")
    env = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v.strip("'")
    return env


ENV = _load_env()
RUN = ENV["RUN_DIR"]
SRC = ENV["SRC_DIR"]
BIN = os.environ.get("VN_TEST_BIN", os.path.join(SRC, "build", "bin"))
HARNESS = os.path.join(SRC, "tests", "lib", "harness.sh")
HOSTS = {"a": ("host-a", ENV["HOST_A_URI"]), "b": ("host-b", ENV["HOST_B_URI"])}

# physical networks of the hosts with a network namespace of their own (nethost_start)
NET_MAPPINGS = "physnet1:vnphys0,physnet2:vnphys1"


def start_nethost(key):
    """Starts libvirt host @key ("na", "nb") in a network namespace of its own."""
    harness("nethost-start", key)
    ENV.update(_load_env())
    HOSTS[key] = ("host-" + key, ENV["HOST_%s_URI" % key.upper()])


def start_nethost_pair():
    """Starts hosts "na" and "nb" sharing their physical networks and a migration link."""
    harness("nethost-pair")
    ENV.update(_load_env())
    for key in ("na", "nb"):
        HOSTS[key] = ("host-" + key, ENV["HOST_%s_URI" % key.upper()])


def stop_nethost(key):
    harness("nethost-stop", key)
    HOSTS.pop(key, None)


def is_nethost(key):
    return os.path.exists(os.path.join(RUN, "hosts", key, "netns"))


def in_host(key, *argv, check=False):
    """Runs @argv inside host @key's namespaces; returns (status, output)."""
    p = subprocess.run(["bash", HARNESS, "ns", RUN, key] + list(argv),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and p.returncode != 0:
        raise AssertionError("%s in host %s: %s" % (argv, key, p.stdout.decode(errors="replace")))
    return p.returncode, p.stdout.decode(errors="replace")

libvirt.registerErrorHandler(lambda *a: None, None)


def wait_for(predicate, timeout, interval=0.2, what="condition"):
    """Polls @predicate until it returns a true value (returned) or @timeout seconds pass.
    A table the predicate reads that does not exist yet (the first agent on an empty
    database creates the schema while it starts, and is ready before) is a condition not
    met yet."""
    end = time.monotonic() + timeout
    pending = None
    while True:
        try:
            v = predicate()
        except psycopg2.errors.UndefinedTable as e:
            v, pending = None, e
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.0f s waiting for %s%s" % (
                timeout, what, " (%s)" % str(pending).strip() if pending else ""))
        time.sleep(interval)


def harness(*args):
    subprocess.run(["bash", HARNESS, args[0], RUN] + list(args[1:]), check=True)


def cluster_ctl(node, *args, timeout=120):
    """rabbitmqctl on RabbitMQ cluster node @node (1-3); its output (tab-separated rows),
    empty when the node does not answer."""
    return subprocess.run(["bash", HARNESS, "cluster-ctl", RUN, str(node)] + list(args),
                          capture_output=True, text=True, timeout=timeout).stdout


def harness_out(*args):
    """A harness command's standard output (it must succeed)."""
    return subprocess.run(["bash", HARNESS, args[0], RUN] + list(args[1:]), check=True,
                          capture_output=True, text=True, timeout=120).stdout


# ---------------------------------------------------------------------------- the package


def _package_build():
    """A build folder for the Debian package: the tests' own build when it is a plain one,
    else (sanitized binaries are no product) build-package/, a plain build without tests."""
    build = os.path.dirname(BIN)
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        if "VIRTNODE_SANITIZE:BOOL=ON" not in f.read():
            return build
    build = os.path.join(SRC, "build-package")
    subprocess.run(["cmake", "-S", SRC, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                    "-DVIRTNODE_TESTS=OFF"], check=True, capture_output=True, timeout=600)
    subprocess.run(["cmake", "--build", build, "-j%d" % os.cpu_count()], check=True,
                   capture_output=True, timeout=1800)
    return build


def build_package(out, version=None):
    """Builds the .deb (and its -dbgsym .ddeb) into @out, with @version if given; returns
    their paths."""
    build = _package_build()
    subprocess.run(["cmake", "--build", build, "--target", "package_files"], check=True,
                   capture_output=True, timeout=600)
    args = ["cpack", "-G", "DEB", "-B", out]
    if version:
        args += ["-D", "CPACK_PACKAGE_VERSION=" + version]
    subprocess.run(args, cwd=build, check=True, capture_output=True, timeout=600)
    debs = glob.glob(os.path.join(out, "virtnode_*.deb"))
    ddebs = glob.glob(os.path.join(out, "virtnode-dbgsym_*.ddeb"))
    assert len(debs) == 1 and len(ddebs) == 1, (debs, ddebs)
    return debs[0], ddebs[0]


def package_version(deb):
    return os.path.basename(deb).split("_")[1]


# ---------------------------------------------------------------------------- the image


_image_cache = {}


def publish_image(name="guest.qcow2", source=None):
    """Copies the test guest (or @source) to the image server; returns (url, sha256, size)."""
    src = source or ENV["GUEST_IMAGE"]
    dst = os.path.join(RUN, "images", name)
    if not os.path.exists(dst):
        shutil.copyfile(src, dst)
    if dst not in _image_cache:
        h = hashlib.sha256()
        with open(dst, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _image_cache[dst] = (h.hexdigest(), os.path.getsize(dst))
    sha, size = _image_cache[dst]
    return "%s/%s" % (ENV["IMAGE_URL"], name), sha, size


def image_requests():
    with urllib.request.urlopen(ENV["IMAGE_URL"] + "/_stats") as r:
        return json.load(r)


def reset_image_requests():
    urllib.request.urlopen(urllib.request.Request(ENV["IMAGE_URL"] + "/_reset", method="POST"))


def build_args(name, image=None, uuid=None, vcpus=1, memory_mb=128, root_gb=1, metadata=None,
               image_id="guest-1"):
    url, sha, size = image or publish_image()
    return {
        "instance": {
            "uuid": uuid or str(uuidlib.uuid4()), "name": name,
            "project_id": "p1", "user_id": "u1",
            "flavor": {"name": "m1.tiny", "vcpus": vcpus, "memory_mb": memory_mb,
                       "root_gb": root_gb, "ephemeral_gb": 0, "swap_mb": 0, "extra_specs": {}},
            "image": {"id": image_id, "url": url, "sha256": sha, "disk_format": "qcow2",
                      "size": size},
            "metadata": metadata or {},
        },
        "networks": [],
        "block_device_mapping": [],
    }


# ---------------------------------------------------------------------------- agents


class Agent:
    """virtnoded run inside libvirt host @hostkey's namespaces ("a" or "b").  Each Agent
    object has a state folder of its own (restarting the same object keeps it)."""

    serial = 0

    def __init__(self, hostkey, shared=True, name=None, extra=None, database=True, wrapper=None,
                 default_paths=False):
        self.key = hostkey
        self.host, self.uri = HOSTS[hostkey]
        if name:
            self.host = name
        Agent.serial += 1
        self.dir = os.path.join(RUN, "agents", "%s-%d-%d" % (self.host, os.getpid(), Agent.serial))
        self.state = os.path.join(self.dir, "state")
        self.instances = os.path.join(ENV["SHARED_DIR"] if shared else ENV["PRIVATE_DIR"],
                                      "instances")
        # default_paths: state_path and instances_path left to their shipped defaults
        # (/var/lib/virtnode), which the harness makes private to each host's namespace
        self.default_paths = default_paths
        if default_paths:
            self.state = os.path.join(RUN, "hosts", hostkey, "virtnode")
            self.instances = os.path.join(self.state, "instances")
        self.api_port = free_port()
        self.conf = os.path.join(self.dir, "virtnode.conf")
        self.log = os.path.join(self.dir, "virtnoded.log")
        self.proc = None
        self.wrapper = list(wrapper or [])  # e.g. valgrind and its options
        os.makedirs(self.dir, exist_ok=True)
        paths = {} if default_paths else {"state_path": self.state,
                                          "instances_path": self.instances}
        sections = {
            "DEFAULT": dict(paths, **{"host": self.host, "log_level": "debug",
                        "graceful_shutdown_timeout": "30", "sync_power_state_interval": "60",
                        "report_interval": "2", "heartbeat_interval": "2"}),
            "amqp": {"transport_url": ENV["AMQP_URL"]},
            "database": {"connection": ENV["PG_DSN"] if database else ""},
            "libvirt": {"uri": "qemu:///system", "virt_type": "qemu",
                        "live_migration_target_uri": self.uri},
            "api": {"listen": "127.0.0.1:%d" % self.api_port},
        }
        if is_nethost(hostkey):
            sections["network"] = {"physical_interface_mappings": NET_MAPPINGS}
            # libvirt's control connection between namespaced hosts: their UNIX sockets
            sections["libvirt"]["live_migration_target_uri"] = self.uri
        for key, value in (extra or {}).items():
            section, option = key.split(".", 1) if "." in key else ("DEFAULT", key)
            sections.setdefault(section, {})[option] = str(value)
        with open(self.conf, "w") as f:
            for section, opts in sections.items():
                f.write("[%s]\n" % section)
                for k, v in opts.items():
                    f.write("%s = %s\n" % (k, v))

    def start(self, wait=True, env=None):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["bash", HARNESS, "ns", RUN, self.key] + self.wrapper +
            [os.path.join(BIN, "virtnoded"), "--config", self.conf],
            stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        logf.close()
        if wait:
            self.wait_ready()
        return self

    def ready(self):
        if is_nethost(self.key):
            rc, _ = in_host(self.key, "curl", "-sf", "-o", "/dev/null", "--max-time", "2",
                            "http://127.0.0.1:%d/readyz" % self.api_port)
            return rc == 0
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % self.api_port,
                                        timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_ready(self, timeout=60):
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError("virtnoded %s exited with %s:\n%s" % (
                    self.host, self.proc.returncode, self.tail()))
            return self.ready()
        wait_for(ok, timeout, what="agent %s ready" % self.host)

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.api_port) as r:
            return r.read().decode()

    def metric(self, sample, text=None):
        """The value of one sample of /metrics (or of @text), e.g.
        'virtnode_heap_bytes{state="in_use"}'."""
        return metric_value(self.metrics() if text is None else text, sample)

    def stop(self, timeout=60):
        """SIGTERM and wait; returns the exit status."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError("virtnoded %s did not stop within %d s" % (self.host, timeout))

    def kill9(self):
        """kill -9 of the daemon itself (not only the harness wrapper)."""
        pid = self.daemon_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def daemon_pid(self):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"virtnoded") and self.conf.encode() in args:
                return int(d)
        return None

    def tail(self, n=40):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def instance_dir(self, uuid):
        if self.instances.startswith(ENV["PRIVATE_DIR"]):
            rel = os.path.relpath(self.instances, ENV["PRIVATE_DIR"])
            return os.path.join(RUN, "hosts", self.key, "private", rel, uuid)
        return os.path.join(self.instances, uuid)

    def console(self, uuid):
        try:
            with open(os.path.join(self.instance_dir(uuid), "console.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------- RPC (oslo)


class Rpc:
    """An oslo.messaging RPC client, as a controller uses."""

    def __init__(self, exchange="virtnode", topic="compute", durable=True, urls=None):
        from oslo_config import cfg
        import oslo_messaging as om
        self.om = om
        conf = cfg.CONF  # oslo.messaging registers some options on the global CONF only
        if not getattr(Rpc, "_parsed", False):
            conf([], project="vntest")
            Rpc._parsed = True
        om.set_transport_defaults(exchange)
        # @urls: comma-separated amqp:// URLs of several brokers (oslo's multi-host form)
        hosts = [u.split("://", 1)[1].rstrip("/") for u in (urls or ENV["AMQP_URL"]).split(",")]
        url = "rabbit://" + ",".join(hosts) + "/"
        self.transport = om.get_rpc_transport(conf, url=url)
        conf.set_override("amqp_durable_queues", durable, group="oslo_messaging_rabbit")
        self.conf = conf
        self.topic = topic
        self.client = om.get_rpc_client(self.transport, om.Target(topic=topic, version="1.0"))

    def call(self, host, method, timeout=60, monitor=None, version="1.0", ctx=None, **kw):
        c = self.client.prepare(server=host, timeout=timeout, version=version,
                                call_monitor_timeout=monitor)
        return c.call(ctx or {"request_id": "req-" + str(uuidlib.uuid4())}, method, **kw)

    def cast(self, host, method, version="1.0", ctx=None, **kw):
        c = self.client.prepare(server=host, version=version)
        c.cast(ctx or {"request_id": "req-" + str(uuidlib.uuid4())}, method, **kw)

    def migration(self, host, uuid):
        """get_migration of @uuid on @host; None when it knows none."""
        try:
            return self.call(host, "get_migration", version="1.1", instance_uuid=uuid)
        except self.om.RemoteError:
            return None

    def wait_migration_ended(self, host, uuid, timeout=180, interval=0.5):
        """Polls @host until the migration of @uuid has ended; returns its record."""
        def ended():
            m = self.migration(host, uuid)
            return m if m and m["status"] not in ("queued", "preparing", "running",
                                                  "post-copy") else None
        return wait_for(ended, timeout, interval=interval, what="the migration to end")

    def close(self):
        self.transport.cleanup()


# ---------------------------------------------------------------------------- database, libvirt


def db():
    conn = psycopg2.connect(ENV["PG_DSN"], connect_timeout=30)
    conn.autocommit = True
    return conn


def db_query(sql, *args):
    conn = db()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def metric_value(text, sample):
    """The value of @sample (a metric's name with its labels) in Prometheus @text."""
    return float(re.search(r"(?m)^" + re.escape(sample) + r" (\S+)", text)[1])


def actions_by_request(prefix, n, timeout=90):
    """{request_id: rows in instance_actions} for the request ids starting with @prefix,
    once there are @n of them (or what there is after @timeout s)."""
    def counts():
        rows = db_query("SELECT request_id, count(*) FROM instance_actions WHERE "
                        "request_id LIKE %s GROUP BY request_id", prefix + "%")
        return {r[0]: r[1] for r in rows}
    def complete():
        c = counts()
        return c if len(c) == n else None
    try:
        return wait_for(complete, timeout, interval=1, what="%d actions" % n)
    except AssertionError:
        return counts()


def virt(hostkey):
    return libvirt.open(HOSTS[hostkey][1])


def domain_uuids(hostkey):
    c = virt(hostkey)
    try:
        return sorted(d.UUIDString() for d in c.listAllDomains())
    finally:
        c.close()


def qemu_pid(uuid):
    """pid of the QEMU process running instance @uuid, or None."""
    needle = ("guest=instance-%s" % uuid).encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if needle in f.read():
                    return int(d)
        except OSError:
            continue
    return None


def qemu_uid(uuid):
    """uid of the QEMU process running instance @uuid, or None."""
    pid = qemu_pid(uuid)
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, TypeError):
        pass
    return None


class AgentTestCase(unittest.TestCase):
    """Base class: an oslo.messaging client (self.rpc); tracks agents and cleans up their
    instances and domains."""

    agents = []

    def setUp(self):
        self._agents = []
        self.rpc = Rpc()

    def agent(self, hostkey, **kw):
        a = Agent(hostkey, **kw)
        self._agents.append(a)
        return a

    def tearDown(self):
        self.rpc.close()
        failed = any(err for _, err in getattr(self._outcome, "errors", []) if err) \
            if hasattr(self, "_outcome") else False
        for a in self._agents:
            if failed:
                print("---- log of %s ----\n%s" % (a.host, a.tail(60)))
            try:
                a.stop(30)
            except Exception as e:
                print("stopping %s: %s" % (a.host, e))
        # domains the test left behind would disturb the next tests
        for key in HOSTS:
            c = virt(key)
            for d in c.listAllDomains():
                try:
                    if d.isActive():
                        d.destroy()
                    d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
                except libvirt.libvirtError:
                    pass
            c.close()
