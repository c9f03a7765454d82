/* Unit tests of the reporter's pure parts; its database work is tested against a real
 * PostgreSQL in tests/integration/test_capacity.py. */
#include "tests/unit/testutil.h"

#include <string.h>

#include "scheduler-client/report/report.h"
#include "scheduler-client/report/schema.h"

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
        cmocka_unit_test(test_capacity_equal),
        cmocka_unit_test(test_schema_migrations_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
