/* luacodec.h - msgpack and JSON <-> Lua values, keeping msgpack types exact.
 * Used by the rule sandbox (ev.payload, ev.headers, sluice.emit/json, state
 * handover) and by sluice.testing. Owns nothing: buffers are the caller's,
 * Lua values live in the caller's state.
 *
 * How types map, and the side records that make an untouched value
 * round-trip to the same msgpack value:
 *
 *   msgpack        Lua
 *   nil            nil
 *   bool           boolean
 *   int, uint      number (a double). |v| <= 2^53 is exact. A larger value
 *                  is rounded and its exact bits kept in the side record.
 *   float64        number. Integral values (1.0) get a side record saying
 *                  "float", else they would come back as ints.
 *   float32        number, side record "float32".
 *   str            string
 *   bin            string, side record "binary"
 *   array          table with keys 1..n and a marker metatable
 *                  (mt.__sluice == "array"); nil elements are kept because
 *                  the metatable then records n (mt.n)
 *   map            table with a marker metatable (mt.__sluice == "map");
 *                  a nil value keeps its key through a side record. A key
 *                  Lua cannot tell from an earlier one of the same map
 *                  (1 and 1.0, a str and a bin of the same bytes, ints
 *                  past 2^53 that round alike, a repeated key) keeps the
 *                  first pair in the table; the others are listed in
 *                  mt.skip[byte offset of the key] (mt.nskip of them,
 *                  mt.lost the first such key), so comparing with the
 *                  original bytes still matches, and encoding the map
 *                  raises rather than drop pairs
 *   ext            table {type = t, data = s} with mt.__sluice == "ext"
 *
 * A side record lives in the metatable of the table that holds the value:
 * mt.hints[k] is the kind of the value at key k ("f" float64, "s" float32,
 * "b" binary, "n" nil, "i"/"u" followed by 8 big-endian bytes: an int64 or
 * uint64 beyond 2^53), mt.orig[k] the value as decoded, and mt.khints[k]
 * the kind of key k itself when it was not a plain string or integer. A
 * hint applies only while t[k] is still rawequal to mt.orig[k] (for "n":
 * while t[k] is nil), so a value the rule replaced is encoded by the
 * plain rules below. Containers without special values share one marker
 * metatable per kind; only the others get a metatable of their own.
 *
 * Encoding a Lua value without a side record: an integral number in the
 * int64/uint64 range (and not -0) is an int, any other number a float64;
 * strings are str; a table with the array marker is an array of
 * max(mt.n, #t) elements; a table with the map marker is a map; an
 * unmarked table is an array when its keys are exactly 1..n (n > 0) and
 * a map otherwise (so {} is an empty map). Boxes made by the constructors
 * (sluice.bin(s), sluice.float(x), sluice.ext(type, data)) encode as bin,
 * float64 and ext. A part of ev.payload (a proxy, proxy.h) encodes as its
 * current bytes. Functions, other userdata, threads, tables as keys, NaN
 * and nil keys and nesting deeper than SL_CODEC_MAX_DEPTH (cycles) raise.
 *
 * JSON is read by the engine's one reader (json.c) into msgpack and then
 * decoded as above, so it knows every marker sl_codec_to_json writes
 * ({"$bin":..}, {"$float":..}, {"$float32":..}, {"$ext":[t,..]},
 * {"$map":[[k,v],...]}) and behaves as JSON ingest does: a number with a
 * fraction or exponent is a float, others are ints (refused beyond
 * uint64/int64); a repeated key keeps the first value, as in a payload.
 *
 * Every function that takes a lua_State may raise a Lua error (bad input,
 * out of memory, or check()): call it from protected code only. check, when
 * not NULL, is called every SL_LUACODEC_CHECK_STEPS steps (a value, or an
 * entry of a table or side record walked: a rule may share one huge side
 * table among many values) and, when encoding, every 64 KiB written, so a
 * rule's CPU budget can stop work on big or crafted inputs. */
#ifndef SL_LUACODEC_H
#define SL_LUACODEC_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "buf.h"

#define SL_LUACODEC_CHECK_STEPS 1024

typedef void (*sl_luacodec_check)(lua_State *L);

/* Add the constructors array(t [, n]), map(t), bin(s), float(x),
 * ext(type, data) and kind(v [, key]) to the table at index idx. kind
 * names what a value encodes as: "nil", "boolean", "int", "float",
 * "float32", "string", "binary", "array", "map", "ext" (with key: the
 * value t[key], using t's side record). Idempotent per state. */
void sl_luacodec_register(lua_State *L, int idx);

/* The check kind() (from sl_luacodec_register) calls while it walks a big
 * table. Allocates a little in the state; may raise on out of memory. */
void sl_luacodec_set_check(lua_State *L, sl_luacodec_check check);

/* Is the key at index a before the one at b in the order every map a Lua
 * table becomes is written in: booleans (false first), numbers
 * (ascending), strings (bytewise, a prefix first), then anything else?
 * One order for all states: LuaJIT seeds its string hashes per state, so
 * lua_next's order differs between the engine, a rebuilt state, the dry
 * run and sluice.testing. Calls no metamethods, never raises. */
int sl_luacodec_key_less(lua_State *L, int a, int b);

/* Sort the sequence t[1..n] of the table at ks (an absolute index) by
 * sl_luacodec_key_less, in place, calling check every
 * SL_LUACODEC_CHECK_STEPS steps (check may be NULL). May raise only
 * through check. */
void sl_luacodec_sort_keys(lua_State *L, int ks, uint32_t n,
                           sl_luacodec_check check);

/* A key on the stack, read once for sorting without Lua calls. */
struct sl_luacodec_slot {
  int idx, type; /* absolute stack index, lua_type */
  double num;    /* a number, or a boolean as 0/1 */
  const char *s; /* a string's bytes (valid while it is on the stack) */
  size_t len;
};

#define SL_LUACODEC_FEW_KEYS 32 /* sorted on the stack; more in a table */

/* Read the key at absolute index idx into k. Never raises. */
void sl_luacodec_slot_of(lua_State *L, int idx, struct sl_luacodec_slot *k);

/* Sort k[0..n) by sl_luacodec_key_less's order, in C: an insertion sort,
 * for up to SL_LUACODEC_FEW_KEYS keys. */
void sl_luacodec_sort_slots(struct sl_luacodec_slot *k, int n);

/* Decode the one msgpack value that fills p[0..len) and push it. Raises on
 * malformed input, trailing bytes or nesting deeper than
 * SL_CODEC_MAX_DEPTH. */
void sl_luacodec_push(lua_State *L, const uint8_t *p, size_t len,
                      sl_luacodec_check check);

/* Append the msgpack encoding of the value at idx to out. On a raised
 * error out may hold a partial value: reset it. */
void sl_luacodec_encode(lua_State *L, int idx, struct sl_buf *out,
                        sl_luacodec_check check);

/* As sl_luacodec_encode, but the encoding may add at most max bytes to
 * out: past that it raises "<what> is larger than <max> bytes" before
 * writing, so a value that shares one big string in many slots cannot
 * grow C memory beyond the bound. check also runs every 64 KiB written. */
void sl_luacodec_encode_max(lua_State *L, int idx, struct sl_buf *out,
                            sl_luacodec_check check, size_t max,
                            const char *what);

/* As sl_luacodec_encode_max, but max bounds an upper estimate of the JSON
 * text sl_codec_to_json makes of the result (escapes, base64 and markers
 * counted at their longest): "<what> is larger than <max> bytes as JSON"
 * is raised before rendering, so rendering the result is cheap too. */
void sl_luacodec_encode_json(lua_State *L, int idx, struct sl_buf *out,
                             sl_luacodec_check check, size_t max,
                             const char *what);

/* Would encoding the value at idx give the same msgpack value as the one
 * that fills p[0..len)? Same means same types and values, maps compared
 * as sets of entries, integer widths ignored; at the top level a scalar
 * equal in value to the original counts as the original (there is no
 * table to hold its side record). Returns 1 or 0; p must be valid. Does
 * not allocate unless a map key from p is no longer interned. check, when
 * not NULL, runs every SL_LUACODEC_CHECK_STEPS values or side-record
 * entries walked (it may raise). */
int sl_luacodec_same(lua_State *L, int idx, const uint8_t *p, size_t len,
                     sl_luacodec_check check);

/* sl_luacodec_push for a map of str to str in which no name comes twice
 * (an event's headers, but a repeat): pushes the same table, cheaper, and
 * returns 1; returns 0 having pushed nothing for any other bytes (decode
 * those with sl_luacodec_push). */
int sl_luacodec_push_strmap(lua_State *L, const uint8_t *p, size_t len,
                            sl_luacodec_check check);

/* sl_luacodec_same for a table sl_luacodec_push_strmap made and the str ->
 * str map p: 1 or 0 as sl_luacodec_same would say, or -1 when it cannot
 * tell cheaply (the table's metatable is no longer the decoder's map
 * marker, or p is not such a map): then ask sl_luacodec_same. */
int sl_luacodec_same_strmap(lua_State *L, int idx, const uint8_t *p,
                            size_t len, sl_luacodec_check check);

/* Parse JSON (RFC 8259, one value, whitespace around it allowed) and push
 * the value; raises "json: <what> at byte N" on bad input. check runs
 * between 64 KiB steps of the parse and while pushing; the parser's C
 * memory (about the msgpack size of the value) that a raise leaves is
 * freed by the state's next decode (one reader per state), or with it. */
void sl_luacodec_push_json(lua_State *L, const char *s, size_t len,
                           sl_luacodec_check check);

#endif
