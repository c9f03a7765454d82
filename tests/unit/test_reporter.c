/* Unit tests of the reporter's pure parts and of its idle loop without a database; its
 * database work is tested against a real PostgreSQL in tests/integration/test_capacity.py. */
#include "tests/unit/testutil.h"

#include <string.h>
#include <time.h>

#include "scheduler-client/report/report.h"
#include "scheduler-client/report/schema.h"

static double process_cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* While its database is away, the reporter's thread sleeps until its next attempt: the
 * heartbeat and rows that fall due meanwhile must not wake it (a cell of agents spinning
 * while their database restarts would flatten it when it is back). */
static void test_sleeps_while_disconnected(void **state)
{
    (void)state;
    VnReporterConfig cfg = { .connection = "host=127.0.0.1 port=1 dbname=none",
                             .connect_timeout = 1,
                             .retry_min = 1,
                             .retry_max = 2,
                             .host = "unit-host",
                             .report_interval = 1,
                             .heartbeat_interval = 1 };
    g_autoptr(GError) err = NULL;
    VnReporter *r = vn_reporter_new(&cfg, NULL, &err);

    assert_non_null(r);
    vn_reporter_start(r);
    vn_reporter_capacity_changed(r);
    g_usleep(200 * 1000); /* the first attempt is refused: the reporter is disconnected */
    double cpu0 = process_cpu_s();
    g_usleep(1500 * 1000);
    double used = process_cpu_s() - cpu0;
    vn_reporter_free(r);
    /* a spinning thread burns the whole 1.5 s; one attempt and its logging, a few ms */
    assert_true(used < 0.3);
}

static void test_conninfo_check(void **state)
{
    g_autoptr(GError) err = NULL;

    (void)state;
    assert_true(vn_report_conninfo_check("", &err));
    assert_true(
        vn_report_conninfo_check("host=db port=5432 dbname=cloud sslmode=verify-full", &err));
    assert_true(vn_report_conninfo_check("postgresql://u@db:5432/cloud?sslmode=require", &err));
    assert_false(vn_report_conninfo_check("host=db port", &err));
    g_clear_error(&err);
    assert_false(vn_report_conninfo_check("nonsense=1", &err));
}

/* Every field counts: a change in any one of them makes the row differ (and be written). */
static void test_capacity_equal(void **state)
{
    VnCapacity a = { 0 };

    (void)state;
    a.host = (char *)"h";
    a.hypervisor_type = (char *)"QEMU";
    a.hypervisor_hostname = (char *)"h.example";
    a.cpu_info = (char *)"{}";
    a.stats = (char *)"{}";
    assert_true(vn_capacity_equal(&a, &a));
    assert_false(vn_capacity_equal(&a, NULL));
    assert_true(vn_capacity_equal(NULL, NULL));
#define DIFFERS(field, value)                                                                      \
    do {                                                                                           \
        VnCapacity b = a;                                                                          \
        b.field = value;                                                                           \
        if (vn_capacity_equal(&a, &b))                                                             \
            fail_msg("a change of '%s' went unnoticed", #field);                                   \
    } while (0)
    DIFFERS(host, (char *)"other");
    DIFFERS(hypervisor_type, (char *)"KVM");
    DIFFERS(hypervisor_version, 1);
    DIFFERS(hypervisor_hostname, (char *)"x");
    DIFFERS(cpu_info, (char *)"{\"a\":1}");
    DIFFERS(vcpus, 1);
    DIFFERS(vcpus_used, 1);
    DIFFERS(memory_mb, 1);
    DIFFERS(memory_mb_used, 1);
    DIFFERS(free_ram_mb, 1);
    DIFFERS(local_gb, 1);
    DIFFERS(local_gb_used, 1);
    DIFFERS(free_disk_gb, 1);
    DIFFERS(disk_available_least, 1);
    DIFFERS(running_vms, 1);
    DIFFERS(cpu_allocation_ratio, 2.0);
    DIFFERS(ram_allocation_ratio, 2.0);
    DIFFERS(disk_allocation_ratio, 2.0);
    DIFFERS(reserved_host_memory_mb, 1);
    DIFFERS(reserved_host_disk_mb, 1);
    DIFFERS(reserved_host_cpus, 1);
    DIFFERS(stats, (char *)"{\"num_instances\":1}");
#undef DIFFERS
}

static void test_schema_migrations_named(void **state)
{
    (void)state;
    assert_true(vn_schema_latest() >= 1);
    for (int n = 1; n <= vn_schema_latest(); n++)
        assert_non_null(vn_schema_sql(n));
    assert_null(vn_schema_sql(0));
    assert_null(vn_schema_sql(vn_schema_latest() + 1));
    assert_non_null(strstr(vn_schema_sql(1), "CREATE TABLE compute_nodes"));
    assert_non_null(strstr(vn_schema_sql(1), "disk_available_least"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conninfo_check),
        cmocka_unit_test(test_sleeps_while_disconnected),
        cmocka_unit_test(test_capacity_equal),
        cmocka_unit_test(test_schema_migrations_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
