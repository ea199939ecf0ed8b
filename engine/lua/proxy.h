/* proxy.h - INTERNAL to engine/lua: ev.payload as proxies over the
 * payload's msgpack bytes (proxy.c).
 *
 * A map or array in the payload is a userdata that reads its entries from
 * the bytes when asked, builds no table for what the rule does not touch,
 * records writes beside the bytes, and is written out by splicing: the
 * original bytes, with only the entries the rule changed re-encoded. Keys
 * Lua cannot tell apart (1 and 1.0, str and bin with the same bytes, ints
 * past 2^53, repeats) show the first pair; keys Lua cannot hold (nil,
 * containers, ext, NaN) are not exposed by name; either way their bytes
 * stay. A proxy is valid during the on_event call that read it. */
#ifndef SL_PROXY_H
#define SL_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "buf.h"
#include "luacodec.h"


#pragma GCC visibility push(hidden)


/* Push the proxy of the payload (a map or array) that fills p[0..len):
 * p must stay valid while the box's event does. */
void sl_proxy_push_root(lua_State *L, const uint8_t *p, size_t len);

/* Push the root sl_proxy_push_root pushed in this call, again. */
struct box;
/* sl_proxy_push_root without the push and without raising: makes the
 * running call's root (sl_proxy_push_again pushes it); -1 when p is no
 * map or array. */
int sl_proxy_begin_root(struct box *b, const uint8_t *p, size_t len);
void sl_proxy_push_again(lua_State *L, const struct box *b);

/* Is the value at idx a proxy? */
int sl_proxy_is(lua_State *L, int idx);

/* Is the value at idx the root proxy, with no change recorded anywhere
 * under it? Then the payload is the original bytes. */
int sl_proxy_untouched(lua_State *L, int idx);

/* Is the value at idx the root of this call's ev.payload (a root of an
 * earlier call is not)? */
int sl_proxy_is_root(lua_State *L, int idx);

/* Is the root proxy p (the box's proot) without any change recorded
 * under it? */
int sl_proxy_clean(const void *p);

/* Append the current value of the proxy at idx to out: the original bytes
 * with changed entries re-encoded. depth is the nesting it starts at; at
 * most max bytes are added, else "<what> is larger than <max> bytes" is
 * raised. Raises on a proxy past its event, values msgpack cannot hold,
 * nesting past SL_CODEC_MAX_DEPTH (a cycle), and at the CPU budget. */
void sl_proxy_write(lua_State *L, int idx, struct sl_buf *out, int depth,
                    size_t max, const char *what);

/* What the proxy at idx holds under the key at kidx encodes as (the names
 * of sluice.kind), or, with kidx 0, "map" or "array". */
const char *sl_proxy_kind(lua_State *L, int idx, int kidx);

/* Make the proxies' metatable and replace pairs, ipairs, next and type in
 * the table at env (absolute) with ones that know proxies: LuaJIT 2.1
 * without 5.2 compatibility honours no __pairs (nor __len on tables, hence
 * userdata). type(proxy) is "table". */
void sl_proxy_open(lua_State *L, int env);

/* Make the metatable at mt (absolute), the one every light userdata
 * shares, serve ev.payload's root too: the root is a light userdata
 * (proxy.c); its __tostring, if any, stays for the others. */
void sl_proxy_light_mt(lua_State *L, int mt);

/* finish's path for a payload changed by top-level scalar writes alone:
 * sl_proxy_log_bound returns an upper bound of the new payload's length,
 * or -1 when the general path (sl_proxy_write) must build it; then
 * sl_proxy_log_fill (an sl_event_fill_fn, ctx the box) splices it in one
 * walk over the root's pairs, at most that many bytes. After it,
 * sl_proxy_log_failed says the walk met what it leaves to the general
 * path (then the bytes written are to be thrown away) and
 * sl_proxy_log_changed whether any pair changed at all. None calls Lua
 * or raises. */
struct box;
long sl_proxy_log_bound(struct box *b);
size_t sl_proxy_log_fill(void *box, uint8_t *dst);
int sl_proxy_log_failed(const struct box *b);
int sl_proxy_log_changed(const struct box *b);

/* Let table.remove and unpack in the table at env take proxies too. After
 * the sandbox's own table library is in place. */
void sl_proxy_open_table(lua_State *L, int env);

/* For the sandbox's table.insert, concat and sort when argument 1 is a
 * proxy: insert through it; replace it by a plain table of p[1..#p]; sort
 * (1 the proxy, 2 the comparator or nil, 3 the sort for plain tables) such
 * a table and write the order back. */
int sl_proxy_insert(lua_State *L);
void sl_proxy_plain_at_1(lua_State *L);
int sl_proxy_sort(lua_State *L);

/* sluice.copy(v): v (a proxy or any value) as plain Lua values with exact
 * types, as the decoder makes them, within max_event_bytes. */
int sl_proxy_copy(lua_State *L);

/* As sl_luacodec_encode_max, starting at nesting depth (for values inside
 * a proxy). */
void sl_luacodec_encode_at(lua_State *L, int idx, struct sl_buf *out,
                           sl_luacodec_check check, size_t max,
                           const char *what, int depth);

#pragma GCC visibility pop

#endif
