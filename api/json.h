/* api/json.h - checked reads of JSON arguments.
 *
 * Every reader names the full path of what it reads ("instance.flavor.vcpus") in its
 * error, so a controller learns exactly which argument broke the contract.  Errors are
 * VN_API_ERROR_INVALID. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#ifndef VN_JSON_AUTOPTR_DEFINED
#define VN_JSON_AUTOPTR_DEFINED
G_DEFINE_AUTOPTR_CLEANUP_FUNC(json_object, json_object_put)
#endif

/* Fails when @obj is not an object or has a key outside @allowed (NULL-terminated). */
gboolean vn_json_expect_object(json_object *obj, const char *path, const char *const *allowed,
                               GError **error);

/* A string member.  Missing or null: @required fails, else *out = NULL.  Control characters
 * and lengths outside [min_len, max_len] fail.  Caller frees *out. */
gboolean vn_json_get_string(json_object *obj, const char *path, const char *key, gboolean required,
                            gsize min_len, gsize max_len, char **out, GError **error);

/* An integer member in [min, max]; missing or null: @required fails, else *out = @def. */
gboolean vn_json_get_int(json_object *obj, const char *path, const char *key, gboolean required,
                         gint64 min, gint64 max, gint64 def, gint64 *out, GError **error);

/* A boolean member; missing or null gives @def. */
gboolean vn_json_get_bool(json_object *obj, const char *path, const char *key, gboolean def,
                          gboolean *out, GError **error);

/* An object of string values (at most @max_entries, keys and values at most 255 bytes) as a
 * new GHashTable of g_strdup'ed strings.  Missing or null gives an empty table. */
gboolean vn_json_get_string_map(json_object *obj, const char *path, const char *key,
                                guint max_entries, GHashTable **out, GError **error);

/* The member @key when it exists and is not null, else NULL (borrowed). */
json_object *vn_json_member(json_object *obj, const char *key);

/* A canonical lower-case uuid from @text, or NULL when @text is not a uuid. */
char *vn_uuid_canonical(const char *text);

/* JSON text of @obj, compact; caller frees. */
char *vn_json_to_string(json_object *obj);
