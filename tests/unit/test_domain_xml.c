/* Unit tests of agent/virt/domain_xml: the generated XML against a golden file
 * (VN_UPDATE_GOLDEN=1 rewrites it), reading our metadata back, migration rewrites, and
 * hostile XML. */
#include "tests/unit/testutil.h"

#include <string.h>

#include "agent/virt/domain_xml.h"
#include "agent/virt/xmlutil.h"
#include "agent/virt/nwfilter.h"
#include "api/port.h"
#include "agent/virt/virt.h"

static VnDomainSpec *sample(void)
{
    VnDomainSpec *s = vn_domain_spec_new();

    s->uuid = g_strdup("0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    s->domain_name = g_strdup("instance-0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    s->meta.instance_name = g_strdup("vm-1 <&> \"quoted\"");
    s->meta.project_id = g_strdup("p1");
    s->meta.user_id = g_strdup("u1");
    s->meta.request_id = g_strdup("req-1");
    s->created_at = 1795290000;
    s->meta.flavor_name = g_strdup("m1.tiny");
    s->meta.vcpus = 1;
    s->meta.memory_mb = 128;
    s->meta.root_gb = 1;
    s->meta.image_id = g_strdup("guest-1");
    s->meta.image_sha256 = g_strdup("ab");
    s->domain_type = g_strdup("qemu");
    s->cpu_mode = g_strdup("host-model");
    s->console_log = g_strdup("/srv/i/0b5e/console.log");
    s->dac_uid = 30001;
    s->mac_model = g_strdup("selinux");
    vn_domain_spec_add_disk(s, "/srv/i/0b5e/disk", "qcow2", "/srv/i/_base/abc", "qcow2", "vda");
    vn_domain_spec_add_disk(s, "/srv/i/0b5e/disk.eph0", "qcow2", NULL, NULL, "vdb");
    g_hash_table_insert(s->guest_strings, g_strdup("vn.mode"), g_strdup("dirty"));
    return s;
}

static void test_golden(void **state)
{
    g_autoptr(VnDomainSpec) s = sample();
    g_autoptr(GError) err = NULL;
    g_autofree char *xml = vn_domain_xml_build(s, &err);
    g_autofree char *path = vn_test_source_path("tests/unit/golden/domain.xml");
    g_autofree char *want = NULL;

    (void)state;
    assert_non_null(xml);
    if (g_getenv("VN_UPDATE_GOLDEN")) {
        vn_test_write(path, xml, strlen(xml));
        return;
    }
    if (!g_file_get_contents(path, &want, NULL, NULL))
        fail_msg("%s missing (VN_UPDATE_GOLDEN=1 writes it)", path);
    if (strcmp(xml, want) != 0)
        fail_msg("generated XML differs from %s:\n%s", path, xml);
    /* what matters, checked explicitly too */
    assert_non_null(strstr(xml, "<domain type=\"qemu\">"));
    assert_non_null(strstr(xml, "vm-1 &lt;&amp;&gt; \"quoted\""));
    assert_non_null(strstr(xml, "<label>+30001:+30001</label>"));
    assert_non_null(strstr(xml, "<seclabel type=\"dynamic\" model=\"selinux\""));
    assert_non_null(strstr(xml, "<seclabel model=\"dac\" relabel=\"no\"/>"));
    assert_non_null(strstr(xml, "virtnode:vn.mode=dirty"));
    assert_non_null(strstr(xml, "append=\"on\""));
}

static void test_parse_back(void **state)
{
    g_autoptr(VnDomainSpec) s = sample();
    g_autoptr(GError) err = NULL;
    g_autofree char *xml = vn_domain_xml_build(s, &err);
    g_autoptr(VnDomainInfo) i = vn_domain_xml_parse(xml, strlen(xml), &err);

    (void)state;
    assert_non_null(i);
    assert_true(i->ours);
    assert_string_equal(i->uuid, s->uuid);
    assert_string_equal(i->instance_uuid, s->uuid);
    assert_string_equal(i->meta.instance_name, "vm-1 <&> \"quoted\"");
    assert_string_equal(i->meta.project_id, "p1");
    assert_string_equal(i->meta.flavor_name, "m1.tiny");
    assert_int_equal(i->meta.memory_mb, 128);
    assert_string_equal(i->meta.image_id, "guest-1");
    assert_string_equal(i->meta.request_id, "req-1");
    assert_int_equal(i->disk_paths->len, 2);
    assert_string_equal(g_ptr_array_index(i->disk_paths, 0), "/srv/i/0b5e/disk");
    assert_string_equal(i->console_log, "/srv/i/0b5e/console.log");
    assert_string_equal(i->dac_label, "+30001:+30001");
}

static void test_foreign_and_hostile(void **state)
{
    const char *foreign = "<domain type='kvm'><name>x</name>"
                          "<uuid>11111111-2222-4333-8444-555555555555</uuid></domain>";
    const char *entity =
        "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
        "<domain><name>&e;</name><uuid>u</uuid></domain>";
    g_autoptr(GError) err = NULL;
    g_autoptr(VnDomainInfo) f = vn_domain_xml_parse(foreign, strlen(foreign), &err);
    g_autoptr(VnDomainInfo) e = NULL;

    (void)state;
    assert_non_null(f);
    assert_false(f->ours);
    e = vn_domain_xml_parse(entity, strlen(entity), &err);
    /* the external entity is never loaded */
    if (e && e->name)
        assert_null(strstr(e->name, "root:"));
    g_clear_error(&err);
    assert_null(vn_domain_xml_parse("<nope/>", 7, &err));
    g_clear_error(&err);
    assert_null(vn_domain_xml_parse("<domain>", 8, &err));
    g_clear_error(&err);
    assert_null(vn_domain_xml_parse("", 0, &err));
}

static void test_for_destination(void **state)
{
    g_autoptr(VnDomainSpec) s = sample();
    g_autoptr(GError) err = NULL;
    g_autofree char *xml = vn_domain_xml_build(s, &err);
    g_autofree char *dest =
        vn_domain_xml_for_destination(xml, "/srv/i", "/data/instances", 30007, &err);
    g_autoptr(VnDomainInfo) i = vn_domain_xml_parse(dest, strlen(dest), &err);

    (void)state;
    assert_string_equal(g_ptr_array_index(i->disk_paths, 0), "/data/instances/0b5e/disk");
    assert_string_equal(i->console_log, "/data/instances/0b5e/console.log");
    assert_string_equal(i->dac_label, "+30007:+30007");
    assert_non_null(strstr(dest, "/data/instances/_base/abc"));
    /* a path that only starts like the folder is left alone */
    g_autofree char *same = vn_domain_xml_for_destination(xml, "/srv/i/0b", "/elsewhere", 0, &err);
    assert_null(strstr(same, "/elsewhere"));
}

static void test_incomplete_spec(void **state)
{
    g_autoptr(VnDomainSpec) s = vn_domain_spec_new();
    g_autoptr(GError) err = NULL;
    g_autofree char *xml = vn_domain_xml_build(s, &err);

    (void)state;
    assert_null(xml);
    assert_true(g_error_matches(err, VN_VIRT_ERROR, VN_VIRT_ERROR_XML));
}

/* The guest CPU sent to a migration's destination is the domain's own <cpu> element. */
static void test_cpu_element(void **state)
{
    static const char dom[] = "<domain type='kvm'><name>x</name>"
                              "<cpu mode='custom' match='exact'><model>Westmere</model>"
                              "<feature policy='require' name='aes'/></cpu><devices/></domain>";
    static const char none[] = "<domain type='qemu'><name>y</name><devices/></domain>";
    g_autoptr(GError) err = NULL;
    g_autofree char *cpu = vn_domain_xml_cpu(dom, strlen(dom), &err);
    g_autofree char *empty = vn_domain_xml_cpu(none, strlen(none), &err);

    (void)state;
    assert_non_null(cpu);
    assert_non_null(strstr(cpu, "<cpu mode=\"custom\" match=\"exact\">"));
    assert_non_null(strstr(cpu, "<model>Westmere</model>"));
    assert_non_null(strstr(cpu, "name=\"aes\""));
    assert_null(strstr(cpu, "<domain"));
    assert_true(vn_cpu_xml_check(cpu, strlen(cpu), &err));
    assert_string_equal(empty, "");
    /* a peer's text that is not a <cpu> document is refused before libvirt sees it */
    assert_false(vn_cpu_xml_check(dom, strlen(dom), &err));
    g_clear_error(&err);
    assert_false(vn_cpu_xml_check("<cpu><model>", 12, &err));
}

/* A port renders as a bridge interface with its MAC, tap, MTU, bandwidth and filter; the
 * filter holds clean-traffic, the DHCP-server drop, the rules and the default drops. */
static void test_iface_and_filter(void **state)
{
    char *ips[] = { (char *)"192.0.2.10", NULL };
    VnIfaceSpec i = { (char *)"fa:16:3e:12:34:56",
                      (char *)"brqnet1",
                      (char *)"tapport1",
                      1400,
                      (char *)"virtnode-port-p1",
                      ips,
                      1000,
                      2000,
                      1024,
                      500,
                      0,
                      0 };
    g_autofree char *x = vn_domain_xml_iface(&i);
    g_autoptr(GPtrArray) rules = g_ptr_array_new_with_free_func(g_free);
    VnSgRule *ssh = g_new0(VnSgRule, 1);
    g_autoptr(GError) err = NULL;

    (void)state;
    assert_non_null(strstr(x, "<interface type=\"bridge\">"));
    assert_non_null(strstr(x, "<mac address=\"fa:16:3e:12:34:56\"/>"));
    assert_non_null(strstr(x, "<source bridge=\"brqnet1\"/>"));
    assert_non_null(strstr(x, "<target dev=\"tapport1\"/>"));
    assert_non_null(strstr(x, "<mtu size=\"1400\"/>"));
    assert_non_null(strstr(x, "<inbound average=\"1000\" peak=\"2000\" burst=\"1024\"/>"));
    assert_non_null(strstr(x, "<outbound average=\"500\"/>"));
    assert_non_null(strstr(x, "<parameter name=\"IP\" value=\"192.0.2.10\"/>"));
    ssh->ingress = TRUE;
    ssh->family = 4;
    ssh->protocol = g_strdup("tcp");
    ssh->port_min = ssh->port_max = 22;
    ssh->remote_ip_prefix = g_strdup("192.0.2.0/24");
    g_ptr_array_add(rules, ssh);
    g_autofree char *f = vn_nwfilter_xml("p1", rules, &err);
    assert_non_null(strstr(f, "name=\"virtnode-port-p1\""));
    assert_non_null(strstr(f, "<filterref filter=\"clean-traffic\"/>"));
    assert_non_null(strstr(f, "<udp srcportstart=\"67\" srcportend=\"67\"/>"));
    assert_non_null(strstr(f, "<tcp dstportstart=\"22\" dstportend=\"22\" "
                              "srcipaddr=\"192.0.2.0\" srcipmask=\"24\"/>"));
    assert_non_null(strstr(f, "action=\"drop\" direction=\"in\" priority=\"1000\""));
    /* the uuid is stable: a redefinition keeps it */
    g_autofree char *f2 = vn_nwfilter_xml("p1", rules, &err);
    assert_string_equal(f, f2);
    g_free(ssh->protocol);
    g_free(ssh->remote_ip_prefix);
}

static VnVolDiskSpec *vol(VnVolDiskType kind, const char *target, const char *bus)
{
    VnVolDiskSpec *v = g_new0(VnVolDiskSpec, 1);

    v->serial = g_strdup("vol-1234");
    v->target = g_strdup(target);
    v->bus = g_strdup(bus);
    v->kind = kind;
    v->format = g_strdup("raw");
    return v;
}

static void test_volume_disks(void **state)
{
    g_autoptr(VnDomainSpec) s = sample();
    g_autoptr(GError) err = NULL;
    VnVolDiskSpec *boot, *blk, *iscsi, *nfs;
    g_autofree char *xml = NULL;

    (void)state;
    /* a guest that boots from an iSCSI volume: its disk comes first, before the local ones */
    g_ptr_array_remove_index(s->disks, 0);
    boot = vol(VN_VOLDISK_NETWORK, "vda", "virtio");
    boot->protocol = g_strdup("iscsi");
    boot->name = g_strdup("iqn.2026-11.org.example:t/1");
    boot->host = g_strdup("192.0.2.10");
    boot->port = 3260;
    boot->initiator = g_strdup("iqn.2010-10.org.virtnode:h1");
    boot->auth_username = g_strdup("vnchap");
    boot->secret_usage = g_strdup("virtnode-volume-vol-1234");
    nfs = vol(VN_VOLDISK_NETWORK, "vde", "virtio");
    nfs->protocol = g_strdup("nfs");
    nfs->name = g_strdup("/exports/cinder/volume-2");
    nfs->host = g_strdup("nas.example");
    nfs->format = (g_free(nfs->format), g_strdup("qcow2"));
    blk = vol(VN_VOLDISK_BLOCK, "sdb", "scsi");
    blk->path = g_strdup("/dev/disk/by-id/dm-uuid-mpath-3600140");
    blk->discard = TRUE;
    blk->read_only = TRUE;
    iscsi = vol(VN_VOLDISK_FILE, "vdf", "virtio");
    iscsi->path = g_strdup("/var/lib/virtnode/mnt/abc/volume-3");
    g_ptr_array_add(s->volumes, nfs);
    g_ptr_array_add(s->volumes, blk);
    g_ptr_array_add(s->volumes, iscsi);
    g_ptr_array_add(s->volumes, boot);
    xml = vn_domain_xml_build(s, &err);
    assert_non_null(xml);
    const char *first_disk = strstr(xml, "<disk ");
    assert_ptr_equal(first_disk, strstr(xml, "<disk type=\"network\" device=\"disk\">"));
    assert_true(strstr(xml, "<target dev=\"vda\"") < strstr(xml, "disk.eph0"));
    assert_non_null(
        strstr(xml, "<source protocol=\"iscsi\" name=\"iqn.2026-11.org.example:t/1\">"));
    assert_non_null(strstr(xml, "<host name=\"192.0.2.10\" port=\"3260\"/>"));
    assert_non_null(strstr(xml, "<iqn name=\"iqn.2010-10.org.virtnode:h1\"/>"));
    assert_non_null(strstr(xml, "<auth username=\"vnchap\">"));
    assert_non_null(strstr(xml, "<secret type=\"iscsi\" usage=\"virtnode-volume-vol-1234\"/>"));
    assert_non_null(strstr(xml, "<source protocol=\"nfs\" name=\"/exports/cinder/volume-2\">"));
    assert_non_null(strstr(xml, "<identity user=\"root\" group=\"root\"/>"));
    assert_non_null(strstr(xml, "<source dev=\"/dev/disk/by-id/dm-uuid-mpath-3600140\"/>"));
    assert_non_null(strstr(xml, "io=\"native\" error_policy=\"stop\" rerror_policy=\"stop\" "
                                "discard=\"unmap\"/>"));
    assert_non_null(strstr(xml, "<target dev=\"sdb\" bus=\"scsi\"/>"));
    assert_non_null(strstr(xml, "<controller type=\"scsi\" model=\"virtio-scsi\"/>"));
    assert_non_null(strstr(xml, "<serial>vol-1234</serial>"));
    assert_non_null(strstr(xml, "<readonly/>"));
    assert_non_null(strstr(xml, "<source file=\"/var/lib/virtnode/mnt/abc/volume-3\"/>"));
    /* the hot-plug form of one volume */
    g_autofree char *one = vn_domain_xml_volume(nfs);
    assert_non_null(strstr(one, "<disk type=\"network\" device=\"disk\">"));
    assert_null(strstr(one, "<devices"));
    assert_non_null(strstr(one, "<target dev=\"vde\" bus=\"virtio\"/>"));
}

/* The documents of a snapshot's copy and a cold migration's transfer, built with libxml2:
 * names and paths escaped, read back as written. */
static void test_backup_pool_volume(void **state)
{
    g_autofree char *b = vn_backup_xml("vda", "/srv/i/a&b<c>/disk.snapshot");
    g_autofree char *p = vn_dir_pool_xml("vn-transfer-1", "/srv/i/x'y\"z");
    g_autofree char *v = vn_raw_volume_xml("disk", G_GUINT64_CONSTANT(1) << 40);
    g_autoptr(xmlDoc) bd = vn_xml_read(b, strlen(b), "domainbackup", NULL);
    g_autoptr(xmlDoc) pd = vn_xml_read(p, strlen(p), "pool", NULL);
    g_autoptr(xmlDoc) vd = vn_xml_read(v, strlen(v), "volume", NULL);
    g_autoptr(xmlXPathContext) bc = NULL, pc = NULL, vc = NULL;
    g_autofree char *file = NULL, *mode = NULL, *path = NULL, *cap = NULL, *fmt = NULL;
    g_auto(GStrv) disks = NULL;

    (void)state;
    assert_non_null(bd);
    assert_non_null(pd);
    assert_non_null(vd);
    bc = xmlXPathNewContext(bd);
    pc = xmlXPathNewContext(pd);
    vc = xmlXPathNewContext(vd);
    mode = vn_xpath_string(bc, "/domainbackup/@mode");
    assert_string_equal(mode, "push");
    disks = vn_xpath_strings(bc, "/domainbackup/disks/disk[@backup='yes']/@name");
    assert_int_equal(g_strv_length(disks), 1);
    assert_string_equal(disks[0], "vda");
    file = vn_xpath_string(bc, "/domainbackup/disks/disk/target/@file");
    assert_string_equal(file, "/srv/i/a&b<c>/disk.snapshot");
    path = vn_xpath_string(pc, "/pool[@type='dir']/target/path");
    assert_string_equal(path, "/srv/i/x'y\"z");
    cap = vn_xpath_string(vc, "/volume/capacity[@unit='bytes']");
    assert_string_equal(cap, "1099511627776");
    fmt = vn_xpath_string(vc, "/volume/target/format/@type");
    assert_string_equal(fmt, "raw");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_volume_disks),       cmocka_unit_test(test_cpu_element),
        cmocka_unit_test(test_iface_and_filter),   cmocka_unit_test(test_golden),
        cmocka_unit_test(test_parse_back),         cmocka_unit_test(test_foreign_and_hostile),
        cmocka_unit_test(test_for_destination),    cmocka_unit_test(test_incomplete_spec),
        cmocka_unit_test(test_backup_pool_volume),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
