/* agent/virt/xmlutil.h - reading XML that libvirt hands us, safely: bounded size, no
 * network, no entity expansion, no DTD; and small XPath helpers. */
#pragma once

#include <glib.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathContext, xmlXPathFreeContext)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathObject, xmlXPathFreeObject)

/* Parses @len bytes of @xml whose root element must be @root; VN_VIRT_ERROR_XML else. */
xmlDocPtr vn_xml_read(const char *xml, gsize len, const char *root, GError **error);

/* The string value of the first node @expr selects, or NULL (also for an empty value). */
char *vn_xpath_string(xmlXPathContextPtr ctx, const char *expr);

/* The string values of every node @expr selects (empty ones skipped); NULL-terminated. */
char **vn_xpath_strings(xmlXPathContextPtr ctx, const char *expr);

/* @doc serialised, indented.  Caller frees. */
char *vn_xml_dump(xmlDocPtr doc);
