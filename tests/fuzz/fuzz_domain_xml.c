/* tests/fuzz/fuzz_domain_xml.c - domain XML read back from libvirt, and the guest CPU
 * element a migration's source sends (read by the destination). */
#include <stdint.h>

#include "agent/virt/domain_xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) err2 = NULL;
    g_autoptr(VnDomainInfo) info = vn_domain_xml_parse((const char *)data, size, &err);
    g_autofree char *text = g_strndup((const char *)data, size);
    g_autofree char *moved = NULL;

    if (!info && !err)
        __builtin_trap();
    moved = vn_domain_xml_for_destination(text, "/var/lib/virtnode/instances", "/srv/instances",
                                          64000, &err2);
    if (!moved && !err2)
        __builtin_trap();
    g_autoptr(GError) err3 = NULL;
    g_autoptr(GError) err4 = NULL;
    g_autofree char *cpu = vn_domain_xml_cpu((const char *)data, size, &err3);
    if (!cpu && !err3)
        __builtin_trap();
    if (!vn_cpu_xml_check((const char *)data, size, &err4) && !err4)
        __builtin_trap();
    return 0;
}
