/* Unit tests of agent/tracker: claims after ratios and reservations, and the capacity row. */
#include "tests/unit/testutil.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <json-c/json.h>

#include "agent/state/tracker.h"
#include "api/error.h"
#include "storage/qcow2.h"

static char *dir;
static VnJournal *journal;
static VnInstanceStore *store;

static int setup(void **state)
{
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;

    (void)state;
    dir = vn_test_tmpdir();
    path = g_build_filename(dir, "j.db", NULL);
    journal = vn_journal_open(path, &err);
    store = vn_instance_store_new(journal, "host-t", &err);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    vn_instance_store_free(store);
    vn_journal_free(journal);
    vn_test_rmtree(dir);
    g_free(dir);
    return 0;
}

static VnTracker *tracker(int vcpus, gint64 memory_mb)
{
    VnTracker *t = vn_tracker_new("host-t", dir, store);
    VnHostInventory inv = { "QEMU", 10000002, "host-t", "{}", vcpus, memory_mb };
    g_autoptr(VnConfig) cfg = vn_config_load(NULL, NULL);

    vn_tracker_set_config(t, cfg); /* ratios 4/1/1, 512 MiB reserved */
    vn_tracker_set_inventory(t, &inv);
    return t;
}

static VnFlavor flavor(int vcpus, int mem, int root)
{
    VnFlavor f = { (char *)"f", vcpus, mem, root, 0, 0, NULL };
    return f;
}

static void test_fits(void **state)
{
    (void)state;
    assert_true(vn_tracker_fits(2, 0, 4.0, 7, 1));
    assert_false(vn_tracker_fits(2, 0, 4.0, 7, 2));
    assert_true(vn_tracker_fits(4096, 512, 1.0, 3000, 584));
    assert_false(vn_tracker_fits(4096, 512, 1.0, 3000, 585));
}

static void test_claims(void **state)
{
    g_autoptr(VnTracker) t = tracker(2, 4096);
    g_autoptr(GError) err = NULL;
    VnFlavor one = flavor(1, 1024, 1);
    VnFlavor big = flavor(64, 128, 1);
    VnFlavor mem = flavor(1, 4000, 1);

    (void)state;
    /* 2 CPUs x 4.0 = 8 vCPUs; (4096 - 512) x 1.0 = 3584 MiB */
    assert_true(vn_tracker_claim(t, "a", &one, &err));
    assert_true(vn_tracker_claim(t, "b", &one, &err));
    assert_true(vn_tracker_claim(t, "c", &one, &err));
    assert_false(vn_tracker_claim(t, "d", &one, &err)); /* 3 x 1024 + 1024 > 3584 */
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES));
    assert_non_null(strstr(err->message, "memory"));
    g_clear_error(&err);
    assert_false(vn_tracker_claim(t, "e", &big, &err));
    assert_non_null(strstr(err->message, "vcpus: 64 requested"));
    g_clear_error(&err);
    /* a check claims nothing */
    vn_tracker_drop(t, "c");
    assert_true(vn_tracker_check(t, "d", &one, &err));
    assert_true(vn_tracker_check(t, "d", &one, &err));
    assert_true(vn_tracker_claim(t, "d", &one, &err));
    /* claiming again for the same instance replaces its claim: three claims of 1024 MiB
     * stand (a, b, d), so 512 MiB are left and 4000 MiB do not fit */
    assert_true(vn_tracker_claim(t, "d", &one, &err));
    g_autoptr(VnCapacity) cap = vn_tracker_capacity(t);
    assert_int_equal(cap->vcpus_used, 3);
    assert_int_equal(cap->memory_mb_used, 512 + 3 * 1024);
    assert_false(vn_tracker_claim(t, "m", &mem, &err));
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES));
    assert_non_null(strstr(err->message, "memory"));
    g_clear_error(&err);
    /* the refused claim took nothing */
    g_autoptr(VnCapacity) after = vn_tracker_capacity(t);
    assert_int_equal(after->vcpus_used, 3);
}

static void test_capacity_row(void **state)
{
    g_autoptr(VnTracker) t = tracker(2, 4096);
    g_autoptr(GError) err = NULL;
    VnFlavor f = flavor(2, 256, 1);
    g_autoptr(VnCapacity) c = NULL;
    struct statvfs st;

    (void)state;
    assert_true(vn_tracker_claim(t, "x", &f, &err));
    c = vn_tracker_capacity(t);
    assert_string_equal(c->host, "host-t");
    assert_int_equal(c->vcpus, 2);
    assert_int_equal(c->vcpus_used, 2);
    assert_int_equal(c->memory_mb, 4096);
    assert_int_equal(c->memory_mb_used, 256 + 512);
    assert_int_equal(c->free_ram_mb, 4096 - 768);
    assert_int_equal(c->local_gb_used, 1);
    assert_int_equal(statvfs(dir, &st), 0);
    assert_int_equal(c->local_gb, (gint64)((guint64)st.f_frsize * st.f_blocks >> 30));
    assert_true(c->cpu_allocation_ratio == 4.0);
    assert_int_equal(c->reserved_host_memory_mb, 512);
    json_object *stats = json_tokener_parse(c->stats);
    assert_non_null(stats);
    assert_true(json_object_object_get_ex(stats, "num_instances", NULL));
    json_object_put(stats);
    /* the same state gives an equal row: the reporter writes nothing new */
    g_autoptr(VnCapacity) again = vn_tracker_capacity(t);
    assert_true(vn_capacity_equal(c, again));
    vn_tracker_drop(t, "x");
    g_autoptr(VnCapacity) after = vn_tracker_capacity(t);
    assert_false(vn_capacity_equal(c, after));
    assert_int_equal(after->vcpus_used, 0);
}

/* Records a new instance @uuid of @project (vm_state building, task scheduling). */
static void add_instance(const char *uuid, const char *project)
{
    g_autoptr(GError) err = NULL;
    VnInstanceRecord *sp = vn_instance_record_new();

    sp->uuid = g_strdup(uuid);
    sp->name = g_strdup("vm");
    sp->project_id = g_strdup(project);
    sp->flavor.name = g_strdup("f");
    assert_true(vn_instance_store_create(store, sp, NULL, &err));
    vn_instance_record_free(sp);
}

/* Rewrites the virtual size in the qcow2 header of @path in place (as `qemu-img resize`
 * does: same file, a later change time). */
static void resize_in_place(const char *path, guint64 size)
{
    guint64 be = GUINT64_TO_BE(size);
    struct stat st;
    int fd = open(path, O_WRONLY);

    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, &be, sizeof(be), 24), sizeof(be));
    assert_int_equal(fstat(fd, &st), 0);
    struct timespec times[2] = { st.st_atim, { st.st_mtim.tv_sec + 1, st.st_mtim.tv_nsec } };
    assert_int_equal(futimens(fd, times), 0);
    close(fd);
}

/* A change of the record of @uuid, as every build, resize and delete makes. */
static void touch_record(const char *uuid, const char *label)
{
    g_autoptr(GError) err = NULL;

    assert_true(vn_instance_store_set_label(store, uuid, label, &err));
}

/* disk_available_least: free space less what the thin disks may still grow by.  A guest's
 * disks are measured again when its record changes: a disk made, one resized in place
 * (read again), one removed (no longer counted); until then a row reuses what was
 * measured. */
static void test_growth_follows_disks(void **state)
{
    g_autoptr(VnTracker) t = tracker(2, 4096); /* the shipped report interval */
    g_autoptr(GError) err = NULL;
    const char *uuid = "77777777-7777-4777-8777-777777777777";
    struct statvfs st;

    (void)state;
    add_instance(uuid, NULL);
    g_autofree char *idir = g_build_filename(dir, uuid, NULL);
    g_autofree char *disk = g_build_filename(idir, "disk", NULL);
    assert_int_equal(mkdir(idir, 0700), 0);

    assert_int_equal(statvfs(dir, &st), 0);
    gint64 free_gb = (gint64)((guint64)st.f_frsize * st.f_bavail >> 30);
    assert_true(free_gb >= 8);
    gint64 quarter = free_gb / 4;
    g_autoptr(VnCapacity) none = vn_tracker_capacity(t);
    assert_true(vn_qcow2_create(disk, (guint64)quarter << 30, NULL, NULL, &err));
    /* the record did not change: the row reuses what it measured */
    g_autoptr(VnCapacity) unseen = vn_tracker_capacity(t);
    assert_true(labs(unseen->disk_available_least - none->disk_available_least) <= 1);
    touch_record(uuid, "a");
    g_autoptr(VnCapacity) one = vn_tracker_capacity(t);
    assert_true(labs((none->disk_available_least - one->disk_available_least) - quarter) <= 1);
    /* the same disk, unchanged: the same answer */
    g_autoptr(VnCapacity) same = vn_tracker_capacity(t);
    assert_int_equal(same->disk_available_least, one->disk_available_least);
    /* grown in place to half of the free space */
    resize_in_place(disk, (guint64)(2 * quarter) << 30);
    touch_record(uuid, "b");
    g_autoptr(VnCapacity) grown = vn_tracker_capacity(t);
    assert_true(labs((none->disk_available_least - grown->disk_available_least) - 2 * quarter) <=
                1);
    /* gone */
    assert_int_equal(unlink(disk), 0);
    touch_record(uuid, "c");
    g_autoptr(VnCapacity) gone = vn_tracker_capacity(t);
    assert_true(labs(gone->disk_available_least - none->disk_available_least) <= 1);
}

/* What a guest's own writes change (its record does not) is measured again after half a
 * report interval: the next periodic row sees it. */
static void test_growth_remeasured_each_interval(void **state)
{
    static const char conf[] = "[DEFAULT]\nreport_interval = 1\n";
    g_autoptr(VnTracker) t = tracker(2, 4096);
    g_autoptr(VnConfig) cfg = vn_config_load_data(conf, strlen(conf), "test.conf", NULL);
    g_autoptr(GError) err = NULL;
    const char *uuid = "88888888-8888-4888-8888-888888888888";
    struct statvfs st;

    (void)state;
    assert_non_null(cfg);
    vn_tracker_set_config(t, cfg);
    add_instance(uuid, NULL);
    g_autofree char *idir = g_build_filename(dir, uuid, NULL);
    g_autofree char *disk = g_build_filename(idir, "disk", NULL);
    assert_int_equal(mkdir(idir, 0700), 0);
    assert_int_equal(statvfs(dir, &st), 0);
    gint64 quarter = (gint64)((guint64)st.f_frsize * st.f_bavail >> 30) / 4;

    g_autoptr(VnCapacity) none = vn_tracker_capacity(t);
    assert_true(vn_qcow2_create(disk, (guint64)quarter << 30, NULL, NULL, &err));
    g_autoptr(VnCapacity) soon = vn_tracker_capacity(t);
    assert_true(labs(soon->disk_available_least - none->disk_available_least) <= 1);
    g_usleep(G_USEC_PER_SEC / 2 + 50000);
    g_autoptr(VnCapacity) later = vn_tracker_capacity(t);
    assert_true(labs((none->disk_available_least - later->disk_available_least) - quarter) <= 1);
    assert_int_equal(unlink(disk), 0);
}

static int stat_of(json_object *stats, const char *key)
{
    json_object *v = NULL;

    return json_object_object_get_ex(stats, key, &v) ? json_object_get_int(v) : -1;
}

/* The row's counts: all instances, by state, by task and by project. */
static void test_capacity_counts(void **state)
{
    g_autoptr(VnTracker) t = tracker(2, 4096);

    (void)state;
    g_autoptr(VnCapacity) empty = vn_tracker_capacity(t);
    json_object *stats = json_tokener_parse(empty->stats);
    assert_int_equal(stat_of(stats, "num_instances"), 0);
    json_object_put(stats);

    add_instance("11111111-1111-4111-8111-111111111111", "p2");
    add_instance("22222222-2222-4222-8222-222222222222", "p1");
    add_instance("33333333-3333-4333-8333-333333333333", "p2");
    g_autoptr(VnCapacity) c = vn_tracker_capacity(t);
    stats = json_tokener_parse(c->stats);
    assert_int_equal(stat_of(stats, "num_instances"), 3);
    assert_int_equal(stat_of(stats, "num_vm_building"), 3);
    assert_int_equal(stat_of(stats, "num_task_scheduling"), 3);
    assert_int_equal(stat_of(stats, "num_proj_p1"), 1);
    assert_int_equal(stat_of(stats, "num_proj_p2"), 2);
    assert_int_equal(stat_of(stats, "num_vm_active"), -1);
    json_object_put(stats);
    /* the projects come sorted, so the same state is the same text */
    assert_true(strstr(c->stats, "num_proj_p1") < strstr(c->stats, "num_proj_p2"));
    g_autoptr(VnCapacity) again = vn_tracker_capacity(t);
    assert_string_equal(c->stats, again->stats);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits),
        cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capacity_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_growth_follows_disks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_growth_remeasured_each_interval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capacity_counts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
