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

static void test_capacity_equal(void **state)
{
    VnCapacity a = { 0 }, b = { 0 };

    (void)state;
    a.host = b.host = (char *)"h";
    a.stats = b.stats = (char *)"{}";
    a.vcpus = b.vcpus = 4;
    assert_true(vn_capacity_equal(&a, &b));
    b.vcpus_used = 1;
    assert_false(vn_capacity_equal(&a, &b));
    b.vcpus_used = 0;
    b.stats = (char *)"{\"num_instances\":1}";
    assert_false(vn_capacity_equal(&a, &b));
    assert_false(vn_capacity_equal(&a, NULL));
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
