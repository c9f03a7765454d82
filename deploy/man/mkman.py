"""Writes the manual pages from what the programs say of themselves, so that they never
drift from the code: virtnoded(8) and virtnodectl(1) from their --help, virtnode.conf(5)
from `virtnoded --config-reference` (the table docs/configuration.md is made from).

    mkman.py BINDIR OUTDIR VERSION     -> OUTDIR/virtnoded.8.gz, virtnodectl.1.gz,
                                          virtnode.conf.5.gz (gzip -9n: reproducible)
"""
import gzip
import os
import re
import subprocess
import sys

bindir, outdir, version = sys.argv[1], sys.argv[2], sys.argv[3]
DATE = "2026-11-30"


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout


def esc(text):
    """Roff-safe text: backslashes, leading dots and quotes, markdown code spans."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = re.sub(r"`([^`]*)`", r"\\fB\1\\fR", text)
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def write(name, section, body):
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "%s.%s.gz" % (name, section))
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(body.encode())


def head(name, section, summary):
    return ('.TH %s %s "%s" "virtnode %s" "virtnode"\n.SH NAME\n%s \\- %s\n'
            % (name.upper(), section, DATE, version, esc(name), esc(summary)))


def options(help_text):
    """The "Application Options" lines of a GLib --help as .TP entries."""
    out, on = [], False
    for line in help_text.splitlines():
        if line.startswith("Application Options"):
            on = True
            continue
        if on and line.strip():
            m = re.match(r"\s+(\S.*?)\s{2,}(.*)", line)
            if m:
                out.append(".TP\n.B %s\n%s\n" % (esc(m.group(1)), esc(m.group(2))))
    return "".join(out)


daemon_help = run(os.path.join(bindir, "virtnoded"), "--help")
write("virtnoded", "8", head("virtnoded", "8", "the virtnode compute node agent") +
      ".SH SYNOPSIS\n.B virtnoded\n[\\fIOPTION\\fR]...\n"
      ".SH DESCRIPTION\n"
      "virtnoded turns scheduling messages from RabbitMQ (oslo.messaging RPC) into KVM guests\n"
      "through libvirt, with their disks, networks, volumes and security labels, reports the\n"
      "host's capacity, heartbeat and instance state to a central PostgreSQL, and\n"
      "live-migrates guests on request. It journals every request before acknowledging it.\n"
      ".SH OPTIONS\n" + options(daemon_help) +
      ".SH SIGNALS\n.TP\n.B SIGTERM\nstop accepting work, let running operations finish for\n"
      "graceful_shutdown_timeout, exit 0\n.TP\n.B SIGHUP\nre\\-read the configuration; options"
      " marked reload apply at once\n"
      ".SH EXIT STATUS\n0 after a graceful stop or a successful check; 1 when the agent cannot"
      " start; 2 for a bad command line or configuration.\n"
      ".SH FILES\n/etc/virtnode/virtnode.conf, /var/lib/virtnode\n"
      ".SH SEE ALSO\n.BR virtnodectl (1),\n.BR virtnode.conf (5)\n")

ctl_help = run(os.path.join(bindir, "virtnodectl"), "--help")
commands = []
on = False
for line in ctl_help.splitlines():
    if line.startswith("Commands"):
        on = True
        continue
    if on and not line.strip():
        break
    if on:
        m = re.match(r"\s+(\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            commands.append(".TP\n.B %s\n%s\n" % (esc(m.group(1)), esc(m.group(2) or "")))
write("virtnodectl", "1", head("virtnodectl", "1", "drive virtnode compute agents") +
      ".SH SYNOPSIS\n.B virtnodectl\n[\\fIOPTION\\fR]... \\fICOMMAND\\fR [\\fIARGS\\fR]\n"
      ".SH DESCRIPTION\nvirtnodectl sends RPC calls and casts to virtnode agents over the"
      " message broker and reads the central database, as a controller would.\n"
      ".SH COMMANDS\n" + "".join(commands) + ".SH OPTIONS\n" + options(ctl_help) +
      ".SH EXIT STATUS\n0 on success, 1 when the operation failed, 2 for a bad command line.\n"
      ".SH SEE ALSO\n.BR virtnoded (8),\n.BR virtnode.conf (5)\n")

ref = run(os.path.join(bindir, "virtnoded"), "--config-reference")
body = [head("virtnode.conf", "5", "configuration of the virtnode compute agent")]
body.append(".SH DESCRIPTION\n")
for block in ref.split("\n\n"):
    block = block.strip()
    if not block or block.startswith("# ") or block.startswith("<!--"):
        continue
    if block.startswith("## "):
        body.append(".SH %s\n" % esc(block[3:].strip()))
        continue
    if block.startswith("|"):
        for row in block.splitlines()[2:]:
            cells = [c.strip() for c in row.strip("|").split("|")]
            if len(cells) < 6:
                continue
            name, typ, default, allowed, reload_, desc = cells[:6]
            meta = "%s, default %s" % (typ, default)
            if allowed:
                meta += ", %s" % allowed
            if reload_:
                meta += ", reloadable"
            body.append(".TP\n.B %s\n(%s) %s\n" % (esc(name.strip("`")), esc(meta), esc(desc)))
        continue
    body.append(".PP\n%s\n" % esc(block))
body.append(".SH SEE ALSO\n.BR virtnoded (8)\n")
write("virtnode.conf", "5", "".join(body))
