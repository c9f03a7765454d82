/* tests/bench/bench_bare.c - the baseline of the build throughput benchmark
 * (bench_build.py): a bare program doing a build's steps and nothing else.
 *
 *   bench_bare --base IMAGE --dir DIR [-n BUILDS] [-w WORKERS] [--commits N] [--flush-each]
 *
 * @n builds, WORKERS at a time (the agent's max_concurrent_builds), each: a folder with
 * the guest's console log, a qcow2 overlay on IMAGE written in-process (the agent's own
 * writer, storage/qcow2.c), the domain the agent defines for such a guest (the same
 * devices and metadata) defined and started on one shared connection to libvirt's
 * test:///default driver, and N durable commits to one SQLite database, as the agent's journal
 * makes for a build, made durable as the journal makes them: each commit goes to the WAL
 * (synchronous=NORMAL) under the connection's lock, then waits outside it for an
 * fdatasync of the WAL that started after it, so that commits made together share one
 * flush.  With --flush-each, each commit flushes on its own while it holds the lock
 * (synchronous=FULL) instead.  No message, no claim, no record, no rollback.
 * Prints one line: the seconds the builds took, builds per second, the process's
 * private memory in KiB once they are done (the domains held by libvirt's test driver,
 * which runs inside the process, as it does in the agent's), and the journal's flushes per
 * build. */
#include <errno.h>
#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "storage/qcow2.h"

static const char *opt_base;
static const char *opt_dir;
static int opt_n = 100;
static int opt_workers = 10;
static int opt_commits = 10;
static gboolean opt_flush_each;

static virConnectPtr conn;
static sqlite3 *journal;
static GMutex journal_lock; /* journal and committed */
static guint64 committed;   /* commits written to the WAL */
static int wal;             /* the WAL, opened once it exists */

static GMutex flush_lock; /* what follows */
static GCond flushed_cond;
static gboolean flushing; /* a thread is in fdatasync, outside flush_lock */
static guint64 flushed;   /* commits on disk */
static guint64 flushes;

static gint failures;

static G_NORETURN void die(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "bench_bare: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* Private_Clean + Private_Dirty of this process, KiB. */
static guint64 private_kib(void)
{
    g_autofree char *text = NULL;
    guint64 kib = 0;

    if (!g_file_get_contents("/proc/self/smaps_rollup", &text, NULL, NULL))
        return 0;
    for (char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (g_str_has_prefix(l, "Private_Clean:") || g_str_has_prefix(l, "Private_Dirty:"))
            kib += g_ascii_strtoull(strchr(l, ':') + 1, NULL, 10);
    }
    return kib;
}

/* Returns once the commits up to @upto are on disk; one fdatasync covers every commit
 * made before it started. */
static gboolean flush_upto(guint64 upto)
{
    int err = 0;

    g_mutex_lock(&flush_lock);
    while (flushed < upto && !err) {
        if (flushing) {
            g_cond_wait(&flushed_cond, &flush_lock);
            continue;
        }
        flushing = TRUE;
        g_mutex_unlock(&flush_lock);
        g_mutex_lock(&journal_lock);
        guint64 target = committed;
        g_mutex_unlock(&journal_lock);
        err = fdatasync(wal) == 0 ? 0 : errno;
        g_mutex_lock(&flush_lock);
        flushing = FALSE;
        flushes++;
        if (!err)
            flushed = MAX(flushed, target);
        g_cond_broadcast(&flushed_cond);
    }
    g_mutex_unlock(&flush_lock);
    if (err)
        fprintf(stderr, "bench_bare: fdatasync: %s\n", g_strerror(err));
    return !err;
}

static gboolean commit(const char *key, int step)
{
    sqlite3_stmt *st = NULL;
    gboolean ok;

    g_mutex_lock(&journal_lock);
    ok = sqlite3_prepare_v2(journal, "INSERT OR REPLACE INTO t (k, v) VALUES (?1, ?2)", -1, &st,
                            NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, step);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    guint64 mine = ++committed;
    g_mutex_unlock(&journal_lock);
    return ok && (opt_flush_each || flush_upto(mine));
}

static void build(gpointer data, gpointer user_data)
{
    int i = GPOINTER_TO_INT(data);
    g_autofree char *uuid = g_uuid_string_random();
    g_autofree char *dir = g_build_filename(opt_dir, uuid, NULL);
    g_autofree char *disk = g_build_filename(dir, "disk", NULL);
    g_autofree char *console = g_build_filename(dir, "console.log", NULL);
    g_autoptr(GError) err = NULL;
    int fd;

    (void)user_data;
    if (g_mkdir(dir, 0700) < 0 ||
        (fd = open(console, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0) {
        g_atomic_int_inc(&failures);
        return;
    }
    close(fd);
    for (int c = 0; c < opt_commits; c++) {
        if (c == 1 && !vn_qcow2_create(disk, 1ull << 30, opt_base, "qcow2", &err)) {
            fprintf(stderr, "bench_bare: %s\n", err->message);
            g_atomic_int_inc(&failures);
            return;
        }
        if (c == 4) {
            /* the domain the agent defines for such a guest on this driver, device by
             * device (its metadata, smbios, console log, the overlay's backing chain) */
            g_autofree char *xml = g_strdup_printf(
                "<domain type='qemu'><name>bare-%d-%.8s</name><uuid>%s</uuid>"
                "<title>bare-%d</title><metadata>"
                "<vn:instance xmlns:vn='http://virtnode.org/xmlns/instance/1.0'>"
                "<vn:uuid>%s</vn:uuid><vn:name>bare-%d</vn:name>"
                "<vn:created>2026-01-01T00:00:00Z</vn:created><vn:owner project='p1' user='u1'/>"
                "<vn:flavor name='m1.tiny' vcpus='1' memory_mb='64' root_gb='1' "
                "ephemeral_gb='0' swap_mb='0'/><vn:image id='guest-1' sha256='%064d'/>"
                "<vn:request id='req-%s'/></vn:instance></metadata>"
                "<memory unit='MiB'>64</memory><currentMemory unit='MiB'>64</currentMemory>"
                "<vcpu>1</vcpu><sysinfo type='smbios'><system>"
                "<entry name='manufacturer'>bare</entry><entry name='product'>bare</entry>"
                "<entry name='serial'>%s</entry><entry name='uuid'>%s</entry></system></sysinfo>"
                "<os><type arch='x86_64'>hvm</type><boot dev='hd'/><smbios mode='sysinfo'/></os>"
                "<features><acpi/><apic/></features><clock offset='utc'/>"
                "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
                "<on_crash>destroy</on_crash><devices>"
                "<disk type='file' device='disk'>"
                "<driver name='qemu' type='qcow2' cache='none' discard='unmap'/>"
                "<source file='%s'/><backingStore type='file'><format type='qcow2'/>"
                "<source file='%s'/><backingStore/></backingStore>"
                "<target dev='vda' bus='virtio'/></disk>"
                "<serial type='file'><source path='%s' append='on'/></serial>"
                "<console type='file'><source path='%s' append='on'/><target type='serial'/>"
                "</console><memballoon model='virtio'><stats period='10'/></memballoon>"
                "</devices></domain>",
                i, uuid, uuid, i, uuid, i, 0, uuid, uuid, uuid, disk, opt_base, console, console);
            virDomainPtr dom = virDomainDefineXML(conn, xml);
            if (!dom || virDomainCreate(dom) < 0) {
                fprintf(stderr, "bench_bare: %s\n", virGetLastErrorMessage());
                g_atomic_int_inc(&failures);
                if (dom)
                    virDomainFree(dom);
                return;
            }
            virDomainFree(dom);
        }
        if (!commit(uuid, c)) {
            g_atomic_int_inc(&failures);
            return;
        }
    }
}

int main(int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "base", 0, 0, G_OPTION_ARG_FILENAME, &opt_base, "The cached base image (qcow2)", "PATH" },
        { "dir", 0, 0, G_OPTION_ARG_FILENAME, &opt_dir, "An empty folder to work in", "DIR" },
        { "builds", 'n', 0, G_OPTION_ARG_INT, &opt_n, "Builds (100)", "N" },
        { "workers", 'w', 0, G_OPTION_ARG_INT, &opt_workers, "At a time (10)", "N" },
        { "commits", 0, 0, G_OPTION_ARG_INT, &opt_commits, "Durable commits per build (10)", "N" },
        { "flush-each", 0, 0, G_OPTION_ARG_NONE, &opt_flush_each,
          "Each commit flushes on its own, under the lock (synchronous=FULL)", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL }
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- a build's bare steps");
    g_autoptr(GError) err = NULL;
    g_autofree char *db = NULL;
    GThreadPool *pool;
    gint64 t0;
    double took;

    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die("%s", err->message);
    if (!opt_base || !opt_dir || opt_n < 1 || opt_workers < 1 || opt_commits < 5)
        die("--base and --dir are required; -n and -w at least 1, --commits at least 5");
    conn = virConnectOpen("test:///default");
    if (!conn)
        die("cannot open test:///default");
    db = g_build_filename(opt_dir, "journal.db", NULL);
    if (sqlite3_open(db, &journal) != SQLITE_OK ||
        sqlite3_exec(journal,
                     opt_flush_each ? "PRAGMA synchronous=FULL;" : "PRAGMA synchronous=NORMAL;",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(journal,
                     "PRAGMA journal_mode=WAL; CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER);",
                     NULL, NULL, NULL) != SQLITE_OK)
        die("cannot make the journal %s", db);
    g_autofree char *wal_path = g_strconcat(db, "-wal", NULL);
    if (!opt_flush_each && (wal = open(wal_path, O_RDONLY | O_CLOEXEC)) < 0)
        die("cannot open the journal's WAL %s: %s", wal_path, g_strerror(errno));

    t0 = g_get_monotonic_time();
    pool = g_thread_pool_new(build, NULL, opt_workers, TRUE, &err);
    if (!pool)
        die("%s", err->message);
    for (int i = 0; i < opt_n; i++)
        g_thread_pool_push(pool, GINT_TO_POINTER(i + 1), NULL); /* never NULL */
    g_thread_pool_free(pool, FALSE, TRUE);
    took = (g_get_monotonic_time() - t0) / 1e6;
    if (g_atomic_int_get(&failures))
        die("%d of %d builds failed", g_atomic_int_get(&failures), opt_n);
    printf("%.4f %.2f %" G_GUINT64_FORMAT " %.2f\n", took, opt_n / took, private_kib(),
           opt_flush_each ? (double)opt_commits : (double)flushes / opt_n);
    sqlite3_close(journal);
    virConnectClose(conn);
    return 0;
}
