/* proxy.c - ev.payload as proxies over the payload's msgpack bytes: reads
 * find entries in the bytes, writes are recorded beside them, and the
 * changed payload is the original bytes with only the changed entries
 * re-encoded (proxy.h says what a rule sees). Internal to engine/lua.
 *
 * A proxy is a userdata (struct pnode) whose environment table, made on
 * first need, is its writes (key -> value, the deleted mark for nil) and
 * holds, under light userdata keys no rule can make: the child proxies
 * read so far (one per container, so p.a == p.a and writes through p.a
 * stay) and an index of the entries (Lua key or array position -> byte
 * offset of the value), built once for nodes of more than SMALL entries
 * after SCANS lookups, so lookups in a big map are not a scan each.
 * Every table lives in the rule's state: charged to memory_mb; every walk
 * over the bytes ticks check_cpu: charged to the CPU budget. */
#include "proxy.h"

#include <math.h>
#include <string.h>

#include <lauxlib.h>

#include "box.h"
#include "codec.h"

#define SMALL 16 /* nodes this small are scanned, never indexed */
#define SCANS 2  /* lookups in a bigger node that scan: one read of a big
                    payload needs no index, a loop of them gets one */

/* Registry keys of the metatable of proxies and of sluice.copy's buffer
 * (a userdata); the mark of a deleted entry. */
static const char mt_key, deleted_key, buf_key;
/* Registry key of the root's env table of an earlier event, for reuse. */
static const char spare_key;

enum { E_CACHE = 1, E_WRITES = 2, E_INDEX = 3 };
static const char slot_keys[4]; /* their addresses: keys in the env */

struct pnode {
  uint32_t gen;  /* the box's pgen when made: stale past its event */
  uint32_t off;  /* its header, from the payload's start */
  uint32_t body; /* its first entry */
  uint32_t n;    /* entries (pairs of a map) in the bytes */
  uint32_t len;  /* an array's length now */
  uint8_t is_map, dirty, has_env, depth;
  uint8_t scans, indexed; /* lookups that scanned; the index is built */
  /* dirty marks reach the root through here; the root keeps every node
   * of its tree alive until the event ends (b->ref_proot) */
  struct pnode *parent;
};

/* The root of ev.payload is no object but a light userdata value: ROOT_TAG
 * in its upper 32 bits and the box's pgen of its call in the lower ones,
 * standing for the state's one root node (wlog.root, reused by every
 * event). Reading ev.payload allocates nothing, and a root kept past its
 * call (in a global, an upvalue) is stale by its value: it fails as any
 * stale proxy does and never reads a later event. Light userdata share
 * one metatable, the proxies'; those that are no root (sluice.drop's
 * mark) fail as an index of a userdata does. */
#define ROOT_TAG 0x51ceu

static inline int is_root_ud(const void *v) {
  return (uint32_t)((uint64_t)(uintptr_t)v >> 32) == ROOT_TAG;
}

struct walk {
  lua_State *L;
  struct box *b; /* set by node_at */
  const uint8_t *base, *end;
  unsigned steps;
};

static void tick(struct walk *w) {
  if ((++w->steps & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
    check_cpu(w->L);
}

static struct pnode *root_of(struct box *b);

/* The node at idx, checked to be of the running event; sets w's bytes. */
static inline struct pnode *node_at(lua_State *L, int idx, struct walk *w) {
  struct pnode *nd = lua_touserdata(L, idx);
  struct box *b = box_of(L);

  if (lua_type(L, idx) == LUA_TLIGHTUSERDATA) {
    if (!is_root_ud(nd))
      luaL_error(L, "attempt to index a userdata value");
    if ((uint32_t)(uintptr_t)nd != b->pgen || b->proot == NULL)
      nd = NULL; /* a root of an earlier call */
    else
      nd = root_of(b);
  }
  if (b->ev == NULL || nd == NULL || nd->gen != b->pgen)
    luaL_error(L, "a part of ev.payload is only valid during the on_event "
                  "call that read it (keep a copy with sluice.copy(v))");
  w->L = L;
  w->b = b;
  w->base = b->ev->data + b->ev->payload_off;
  w->end = w->base + b->ev->payload_len;
  return nd;
}

static void bad(struct walk *w, const uint8_t *p) {
  luaL_error(w->L, "ev.payload: not valid msgpack at byte %d",
             (int)(p - w->base));
}

static void rd(struct walk *w, const uint8_t **pp, struct sl_codec_item *it) {
  if (sl_codec_read_item(pp, w->end, it) != 0)
    bad(w, *pp);
}

/* The length of the value at p (< end) when its first byte tells it and
 * it holds nothing (fixint, fixstr, nil, bool, fixed-width numbers), else
 * 0: most payload values, stepped over without decoding. */
#define R4(v) v, v, v, v
#define R16(v) R4(v), R4(v), R4(v), R4(v)
static const uint8_t flat_tab[256] = { /* by first byte; 0: not flat */
    R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), /* fixint */
    R16(0), R16(0), /* fixmap, fixarray */
    1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, /* fixstr */
    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
    1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 5, 9, 2, 3, 5, 9, /* nil, bool, c/u */
    2, 3, 5, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* int 8-64 */
    R16(1), R16(1)}; /* negative fixint */
#undef R16
#undef R4

static inline size_t flat_len(const uint8_t *p, const uint8_t *end) {
  size_t n = flat_tab[*p];
  return n <= (size_t)(end - p) ? n : 0;
}

static void skip_rest(struct walk *w, const uint8_t **pp, int depth);

/* Step over one value, every element of it ticking the budget. Flat
 * values inline; the rest in skip_rest (its frame costs more). */
static inline void skip(struct walk *w, const uint8_t **pp, int depth) {
  size_t fl;

  tick(w);
  if (depth > SL_CODEC_MAX_DEPTH)
    bad(w, *pp);
  if (*pp < w->end && (fl = flat_len(*pp, w->end)) != 0)
    *pp += fl;
  else
    skip_rest(w, pp, depth);
}

static void skip_rest(struct walk *w, const uint8_t **pp, int depth) {
  struct sl_codec_item it;
  uint64_t i, n;

  rd(w, pp, &it);
  n = it.t == SL_MP_ARR ? it.n : it.t == SL_MP_MAP ? 2 * (uint64_t)it.n : 0;
  for (i = 0; i < n; i++)
    skip(w, pp, depth + 1);
}

/* Read a map key at *pp and step past all of it: a container key (which
 * Lua cannot hold) has elements after its header. */
static void rd_key_rest(struct walk *w, const uint8_t **pp,
                        struct sl_codec_item *it, int depth);

static inline void rd_key(struct walk *w, const uint8_t **pp,
                          struct sl_codec_item *it, int depth) {
  const uint8_t *p = *pp;
  if (p < w->end && (*p & 0xe0) == 0xa0 &&
      (size_t)(*p & 0x1f) < (size_t)(w->end - p)) { /* a fixstr: most keys */
    it->t = SL_MP_STR;
    it->s = p + 1;
    it->n = *p & 0x1f;
    *pp = p + 1 + it->n;
    return;
  }
  rd_key_rest(w, pp, it, depth);
}

static void rd_key_rest(struct walk *w, const uint8_t **pp,
                        struct sl_codec_item *it, int depth) {
  const uint8_t *p = *pp;
  rd(w, &p, it);
  if (it->t == SL_MP_ARR || it->t == SL_MP_MAP) {
    p = *pp;
    skip(w, &p, depth);
  }
  *pp = p;
}

/* Push the Lua key a map key decodes to (as the decoder's table holds
 * it); 0, nothing pushed, for keys Lua cannot hold. */
static int push_lkey(lua_State *L, const struct sl_codec_item *it) {
  switch (it->t) {
  case SL_MP_STR: case SL_MP_BIN:
    lua_pushlstring(L, (const char *)it->s, it->n);
    return 1;
  case SL_MP_UINT: lua_pushnumber(L, (lua_Number)it->u); return 1;
  case SL_MP_INT: lua_pushnumber(L, (lua_Number)it->i); return 1;
  case SL_MP_F32:
    if (isnan(it->f))
      return 0;
    lua_pushnumber(L, it->f);
    return 1;
  case SL_MP_F64:
    if (isnan(it->d))
      return 0;
    lua_pushnumber(L, it->d);
    return 1;
  case SL_MP_BOOL: lua_pushboolean(L, it->b); return 1;
  default: return 0; /* nil, containers, ext */
  }
}

/* A Lua key read once, to compare with many map keys. */
struct lkey {
  int t; /* its Lua type */
  const char *s;
  size_t n;
  double d;
};

/* lkey_of for a value whose Lua type t is known. */
static inline void lkey_of_t(lua_State *L, int k, int t, struct lkey *lk) {
  lk->t = t;
  if (t == LUA_TSTRING) {
    lk->s = lua_tolstring(L, k, &lk->n);
    lk->d = 0;
  } else {
    lk->s = NULL;
    lk->d = t == LUA_TNUMBER    ? lua_tonumber(L, k)
            : t == LUA_TBOOLEAN ? lua_toboolean(L, k)
                                : 0;
  }
}

static inline void lkey_of(lua_State *L, int k, struct lkey *lk) {
  lk->t = lua_type(L, k);
  lk->s = lk->t == LUA_TSTRING ? lua_tolstring(L, k, &lk->n) : NULL;
  lk->d = lk->t == LUA_TNUMBER    ? lua_tonumber(L, k)
          : lk->t == LUA_TBOOLEAN ? lua_toboolean(L, k)
                                  : 0;
}

/* Does the map key it stand for the Lua key lk? */
static int lkey_is(const struct lkey *lk, const struct sl_codec_item *it) {
  switch (lk->t) {
  case LUA_TSTRING:
    return (it->t == SL_MP_STR || it->t == SL_MP_BIN) && it->n == lk->n &&
           memcmp(it->s, lk->s, lk->n) == 0;
  case LUA_TNUMBER:
    return (it->t == SL_MP_UINT && (double)it->u == lk->d) ||
           (it->t == SL_MP_INT && (double)it->i == lk->d) ||
           (it->t == SL_MP_F32 && (double)it->f == lk->d) ||
           (it->t == SL_MP_F64 && it->d == lk->d);
  case LUA_TBOOLEAN:
    return it->t == SL_MP_BOOL && it->b == (int)lk->d;
  default:
    return 0;
  }
}

static int key_is(lua_State *L, int k, const struct sl_codec_item *it) {
  struct lkey lk;
  lkey_of(L, k, &lk);
  return lkey_is(&lk, it);
}

#define FEW 8 /* see struct plan */
#define SCACHE_N 16   /* strings in the value cache (struct wlog) */
#define SCACHE_MAX 24 /* bytes of a string it holds */

/* The root's write log: what a rule most often does to ev.payload (set a
 * few top-level fields to strings, numbers, booleans or nil), recorded in
 * C without the env table and its spare, and spliced without walking Lua
 * tables. Only the running event's root map uses it (b->proot), and only
 * while no env table holds writes of its own: the first operation that
 * needs the env (a write of a table, a ninth key, iterating the added
 * keys, the general splice) moves the log into it (spill), so the log is
 * always the newer of the two. Strings stay alive in the anchor table
 * (slots 2j+1 and 2j+2 of entry j), so their bytes can be kept here. */
struct wentry {
  struct lkey key, val; /* val.t LUA_TNIL: deleted */
};

struct wlog {
  int n;
  int ref_anchor;
  int ref_mt; /* the proxies' metatable: a ref is found faster than mt_key */
  /* the string each anchor slot holds (NULL: another value): a string
   * stored again (the same key or constant, event after event) is there
   * already, alive, so its address names it */
  const void *anch[2 * FEW];
  const char *anch_s[2 * FEW]; /* and its bytes */
  size_t anch_n[2 * FEW];
  struct wentry e[FEW];
  /* what sl_proxy_log_fill found: a payload for the general path; any
   * change made at all */
  uint8_t failed, changed;
  uint32_t lens; /* bit n: a logged string key of n < 32 bytes */
  /* short strings push_at pushed lately (enum-like values: a currency, a
   * status), each kept alive in its registry slot: pushed again from
   * there instead of hashed and interned anew */
  struct {
    uint8_t len; /* 0: empty */
    char s[SCACHE_MAX];
    int ref;
  } sc[SCACHE_N];
  struct pnode root; /* the root of every event's payload (ROOT_TAG) */
};

static struct pnode *root_of(struct box *b) {
  return &((struct wlog *)b->pwlog)->root;
}

static struct wlog *wlog_of_b(const struct box *b, const struct pnode *nd) {
  struct wlog *wl = b->pwlog;
  return wl != NULL && wl->n > 0 && b->proot == nd ? wl : NULL;
}

static struct wlog *wlog_of(lua_State *L, const struct pnode *nd) {
  return wlog_of_b(box_of(L), nd);
}

/* The entry of the Lua key lk, or -1. */
static int wlog_find(const struct wlog *wl, const struct lkey *lk) {
  int j;
  for (j = 0; j < wl->n; j++)
    if (wl->e[j].key.t == lk->t &&
        (lk->t == LUA_TSTRING
             ? wl->e[j].key.n == lk->n &&
                   (lk->n == 0 || (wl->e[j].key.s[0] == lk->s[0] &&
                                   memcmp(wl->e[j].key.s, lk->s, lk->n) == 0))
             : wl->e[j].key.d == lk->d))
      return j;
  return -1;
}

/* Push the value of entry j (nil when deleted). */
static void wlog_push(lua_State *L, const struct wlog *wl, int j) {
  const struct lkey *v = &wl->e[j].val;
  switch (v->t) {
  case LUA_TSTRING:
  case LUA_TNUMBER: /* the value as set: lua_pushnumber would make a NaN
                       the canonical one, losing the sign its bytes keep */
    lua_rawgeti(L, LUA_REGISTRYINDEX, wl->ref_anchor);
    lua_rawgeti(L, -1, 2 * j + 2);
    lua_remove(L, -2);
    return;
  case LUA_TBOOLEAN: lua_pushboolean(L, v->d != 0); return;
  default: lua_pushnil(L); return;
  }
}

/* Anchor slot i (0-based) = the value at v (zero: the number 0), unless
 * it holds that very string already. */
static void anchor_slow(lua_State *L, struct wlog *wl, int i, int v,
                        const void *p, const struct lkey *lk, int zero) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, wl->ref_anchor);
  if (zero)
    lua_pushnumber(L, 0);
  else
    lua_pushvalue(L, v);
  lua_rawseti(L, -2, i + 1);
  lua_pop(L, 1);
  wl->anch[i] = p;
  wl->anch_s[i] = lk->s;
  wl->anch_n[i] = lk->t == LUA_TSTRING ? lk->n : 0;
}

static inline void anchor(lua_State *L, struct wlog *wl, int i, int v,
                          const void *p, const struct lkey *lk, int zero) {
  if (p == NULL || p != wl->anch[i])
    anchor_slow(L, wl, i, v, p, lk, zero);
}

/* lkey_of_t for the value at v of type t, which goes to anchor slot i:
 * the bytes of a string that slot holds already are known. Sets *p to
 * the string's address (NULL for another type). */
static inline void lkey_slot(lua_State *L, struct wlog *wl, int v, int t,
                             int i, struct lkey *lk, const void **p) {
  *p = NULL;
  if (t != LUA_TSTRING) {
    lkey_of_t(L, v, t, lk);
    return;
  }
  *p = lua_topointer(L, v);
  lk->t = t;
  lk->d = 0;
  if (*p == wl->anch[i]) {
    lk->s = wl->anch_s[i];
    lk->n = wl->anch_n[i];
  } else {
    lk->s = lua_tolstring(L, v, &lk->n);
  }
}

/* Record p[k] = v (stack indexes 2 and 3 of __newindex) for the root map
 * nd when the log can hold it: returns 1, else 0 (nothing done). kt is
 * the key's type. */
static int wlog_put(lua_State *L, struct box *b, struct pnode *nd, int kt) {
  struct wlog *wl = b->pwlog;
  struct lkey lk;
  const void *kp, *vp;
  int vt = lua_type(L, 3), j;

  if (wl == NULL || b->proot != nd || nd->has_env ||
      (vt != LUA_TNIL && vt != LUA_TSTRING && vt != LUA_TNUMBER &&
       vt != LUA_TBOOLEAN))
    return 0;
  /* a new key takes slot 2 * n: most writes are of a key new this event */
  lkey_slot(L, wl, 2, kt, wl->n < FEW ? 2 * wl->n : 0, &lk, &kp);
  j = wlog_find(wl, &lk);
  if (j < 0) {
    if (wl->n == FEW)
      return 0;
    j = wl->n;
    if (lk.t == LUA_TNUMBER && lk.d == 0) /* -0.0 is the key 0, as a */
      lk.d = 0;                           /* table makes it */
    anchor(L, wl, 2 * j, 2, kp, &lk, lk.t == LUA_TNUMBER && lk.d == 0);
    wl->e[j].key = lk; /* its bytes: those of the anchored string */
    wl->n++;
  }
  lkey_slot(L, wl, 3, vt, 2 * j + 1, &wl->e[j].val, &vp);
  anchor(L, wl, 2 * j + 1, 3, vp, &wl->e[j].val, 0);
  return 1;
}

/* Move the log into the env table on top (the root's E_WRITES). */
static void wlog_spill(lua_State *L, struct wlog *wl) {
  int j, t = lua_gettop(L);

  for (j = 0; j < wl->n; j++) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, wl->ref_anchor);
    lua_rawgeti(L, -1, 2 * j + 1);
    if (wl->e[j].val.t == LUA_TNIL)
      lua_pushlightuserdata(L, (void *)&deleted_key);
    else
      wlog_push(L, wl, j);
    lua_rawset(L, t);
    lua_settop(L, t);
  }
  wl->n = 0;
}

/* Push the env table an earlier event's root had, emptied, and return 1;
 * or 0 (nothing pushed) when there is none or it held more than FEW
 * entries (then a fresh one is cheaper than emptying it). Only the root
 * of the running event uses it: a stale proxy never reads its env. Saves
 * a table's allocations (and the collector's work) per changing event. */
static int take_spare(lua_State *L) {
  int t, n = 0;

  lua_pushlightuserdata(L, (void *)&spare_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) { /* clearing fields while walking is allowed */
    if (++n > FEW) {
      lua_settop(L, t - 1);
      return 0;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushnil(L);
    lua_rawset(L, t);
  }
  return 1;
}

/* Push the env table of the node at idx (absolute), made when missing;
 * the root's write log moves into it. */
static void push_env(lua_State *L, int idx, struct pnode *nd) {
  struct wlog *wl = wlog_of(L, nd);

  if (nd->parent == NULL) { /* the root's: in the registry, reused */
    if (nd->has_env) {
      lua_pushlightuserdata(L, (void *)&spare_key);
      lua_rawget(L, LUA_REGISTRYINDEX);
    } else if (!take_spare(L)) {
      lua_createtable(L, 0, 2);
      lua_pushlightuserdata(L, (void *)&spare_key);
      lua_pushvalue(L, -2);
      lua_rawset(L, LUA_REGISTRYINDEX);
    }
    nd->has_env = 1;
  } else if (!nd->has_env) {
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, -1);
    lua_setfenv(L, idx);
    nd->has_env = 1;
  } else {
    lua_getfenv(L, idx);
  }
  if (wl != NULL)
    wlog_spill(L, wl);
}

/* Push a table of the node at idx (absolute): E_WRITES is the env table
 * itself, the others hang in it under light userdata keys (no rule can
 * make one). Made when make is set, else nil when missing. Returns
 * whether a table was pushed. */
static int push_slot(lua_State *L, int idx, struct pnode *nd, int slot,
                     int make) {
  if (!nd->has_env && !make && wlog_of(L, nd) == NULL) {
    lua_pushnil(L);
    return 0;
  }
  push_env(L, idx, nd);
  if (slot == E_WRITES)
    return 1;
  lua_pushlightuserdata(L, (void *)&slot_keys[slot]);
  lua_rawget(L, -2);
  if (lua_isnil(L, -1) && make) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, (void *)&slot_keys[slot]);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  lua_remove(L, -2);
  return lua_istable(L, -1);
}

/* The slot's table = the value at v, for the node at idx (absolute). */
static void set_slot(lua_State *L, int idx, struct pnode *nd, int slot,
                     int v) {
  push_env(L, idx, nd);
  lua_pushlightuserdata(L, (void *)&slot_keys[slot]);
  lua_pushvalue(L, v);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Build the index of a node of more than SMALL entries, once. */
static void build_index(struct walk *w, int idx, struct pnode *nd) {
  lua_State *L = w->L;
  const uint8_t *p = w->base + nd->body;
  struct sl_codec_item key;
  uint32_t i;
  int t;

  lua_createtable(L, nd->is_map ? 0 : (int)nd->n, nd->is_map ? (int)nd->n : 0);
  t = lua_gettop(L);
  for (i = 0; i < nd->n; i++) {
    tick(w);
    if (!nd->is_map) {
      lua_pushnumber(L, (lua_Number)(p - w->base));
      lua_rawseti(L, t, (int)i + 1);
    } else {
      rd_key(w, &p, &key, nd->depth + 1);
      if (push_lkey(L, &key)) {
        lua_pushvalue(L, -1);
        lua_rawget(L, t);
        if (lua_isnil(L, -1)) { /* the first of keys Lua cannot tell apart */
          lua_pop(L, 1);
          lua_pushnumber(L, (lua_Number)(p - w->base));
          lua_rawset(L, t);
        } else {
          lua_pop(L, 2);
        }
      }
    }
    skip(w, &p, nd->depth + 1);
  }
  set_slot(L, idx, nd, E_INDEX, t);
  lua_pop(L, 1);
}

/* Build a big node's index before a walk over its env table that looks
 * keys up: find would build it mid-walk, and the new field it stores in
 * the table being walked lets lua_next rehash, then skip or repeat keys
 * (an added key written twice, or lost). */
static void index_now(struct walk *w, int idx, struct pnode *nd) {
  if (nd->n > SMALL && !nd->indexed) {
    build_index(w, idx, nd);
    nd->indexed = 1;
  }
}

/* The offset of the value the node holds in its bytes under the Lua key
 * at k (absolute), or 0 when none (0 is the root's header, no value). */
static uint32_t find_lk(struct walk *w, int idx, struct pnode *nd, int k,
                        const struct lkey *known);

static uint32_t find(struct walk *w, int idx, struct pnode *nd, int k) {
  return find_lk(w, idx, nd, k, NULL);
}

/* find, with the key at k read already into known (NULL: not yet). */
static uint32_t find_lk(struct walk *w, int idx, struct pnode *nd, int k,
                        const struct lkey *known) {
  lua_State *L = w->L;
  const uint8_t *p = w->base + nd->body;
  struct sl_codec_item key;
  struct lkey lk;
  uint32_t i, off = 0;
  double d = 0;

  if (!nd->is_map) {
    if (lua_type(L, k) != LUA_TNUMBER)
      return 0;
    d = lua_tonumber(L, k);
    if (!(d >= 1 && d <= (double)nd->n && d == floor(d)))
      return 0;
  }
  if (nd->n > SMALL && (nd->indexed || ++nd->scans > SCANS)) {
    if (!nd->indexed) {
      build_index(w, idx, nd);
      nd->indexed = 1;
    }
    push_slot(L, idx, nd, E_INDEX, 0);
    lua_pushvalue(L, k);
    lua_rawget(L, -2);
    if (lua_type(L, -1) == LUA_TNUMBER)
      off = (uint32_t)lua_tonumber(L, -1);
    lua_pop(L, 2);
    return off;
  }
  if (!nd->is_map) {
    for (i = 1; i < (uint32_t)d; i++)
      skip(w, &p, nd->depth + 1);
    return (uint32_t)(p - w->base);
  }
  if (known == NULL) {
    lkey_of(L, k, &lk);
    known = &lk;
  }
  i = 0;
  if (known->t == LUA_TSTRING && known->n < 32) {
    /* the usual case: a short string key among fixstr keys and flat
     * values, with no decode and no call per pair; any other pair goes
     * on in the general loop below, from where this one stopped */
    const uint8_t want = (uint8_t)(0xa0 | known->n);
    size_t fl;
    for (; i < nd->n; i++) {
      const uint8_t *v;
      if (p >= w->end || (*p & 0xe0) != 0xa0 ||
          (v = p + 1 + (*p & 0x1f)) >= w->end)
        break;
      if (*p == want && memcmp(p + 1, known->s, known->n) == 0)
        return (uint32_t)(v - w->base);
      if ((fl = flat_len(v, w->end)) == 0)
        break;
      p = v + fl;
      tick(w); /* as the general loop ticks: a key, a value */
      tick(w);
    }
  }
  for (; i < nd->n; i++) {
    tick(w);
    rd_key(w, &p, &key, nd->depth + 1);
    if (known->t == LUA_TSTRING && key.t == SL_MP_STR ? /* the usual case */
        key.n == known->n && memcmp(key.s, known->s, known->n) == 0
        : lkey_is(known, &key))
      return (uint32_t)(p - w->base);
    skip(w, &p, nd->depth + 1);
  }
  return 0;
}

/* Push a new proxy for the container whose header it was read at off. */
static void init_node(struct box *b, struct pnode *nd, uint32_t off,
                      uint32_t body, const struct sl_codec_item *it,
                      struct pnode *parent) {
  nd->gen = b->pgen;
  nd->off = off;
  nd->body = body;
  nd->n = nd->len = it->n;
  nd->is_map = it->t == SL_MP_MAP;
  nd->dirty = 0;
  nd->has_env = 0;
  nd->scans = nd->indexed = 0;
  nd->depth = parent ? (uint8_t)(parent->depth + 1) : 0;
  nd->parent = parent;
}

static struct pnode *new_node(lua_State *L, uint32_t off, uint32_t body,
                              const struct sl_codec_item *it,
                              struct pnode *parent) {
  struct pnode *nd = lua_newuserdata(L, sizeof(*nd));
  struct box *b = box_of(L);

  init_node(b, nd, off, body, it, parent);
  if (b->pwlog != NULL) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ((struct wlog *)b->pwlog)->ref_mt);
  } else {
    lua_pushlightuserdata(L, (void *)&mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
  }
  lua_setmetatable(L, -2);
  return nd;
}

/* lua_pushlstring, through the value cache (struct wlog) for short ones. */
static void push_str(struct walk *w, const char *p, size_t n) {
  lua_State *L = w->L;
  struct wlog *wl = w->b->pwlog;
  unsigned h;

  if (n == 0 || n > SCACHE_MAX || wl == NULL) {
    lua_pushlstring(L, p, n);
    return;
  }
  h = ((unsigned)n * 31u + (uint8_t)p[0] * 7u + (uint8_t)p[n - 1]) %
      SCACHE_N;
  if (wl->sc[h].len == n && memcmp(wl->sc[h].s, p, n) == 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, wl->sc[h].ref);
    return;
  }
  lua_pushlstring(L, p, n);
  lua_pushvalue(L, -1);
  lua_rawseti(L, LUA_REGISTRYINDEX, wl->sc[h].ref); /* the slot exists */
  memcpy(wl->sc[h].s, p, n);
  wl->sc[h].len = (uint8_t)n;
}

/* Push the value at offset vo of the node at idx, which holds it under the
 * Lua key at k: scalars as the decoder makes them, containers as proxies
 * (one per container and event, cached). */
static void push_at(struct walk *w, int idx, struct pnode *nd, uint32_t vo,
                    int k) {
  lua_State *L = w->L;
  const uint8_t *p = w->base + vo, *q = p;
  struct sl_codec_item it;
  size_t left = (size_t)(w->end - p);

  /* the usual scalars without a decode: fixint, uint 8/16/32, fixstr */
  if (left == 0)
    bad(w, p);
  if (*p <= 0x7f) {
    lua_pushnumber(L, (lua_Number)*p);
    return;
  }
  if (left >= 5 && *p == 0xce) {
    lua_pushnumber(L, (lua_Number)((uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 |
                                   (uint32_t)p[3] << 8 | p[4]));
    return;
  }
  if (left >= 3 && *p == 0xcd) {
    lua_pushnumber(L, (lua_Number)((uint32_t)p[1] << 8 | p[2]));
    return;
  }
  if (left >= 2 && *p == 0xcc) {
    lua_pushnumber(L, (lua_Number)p[1]);
    return;
  }
  if ((*p & 0xe0) == 0xa0 && left > (size_t)(*p & 0x1f)) {
    push_str(w, (const char *)p + 1, *p & 0x1fu);
    return;
  }
  rd(w, &q, &it);
  switch (it.t) {
  case SL_MP_NIL: lua_pushnil(L); return;
  case SL_MP_BOOL: lua_pushboolean(L, it.b); return;
  case SL_MP_UINT: lua_pushnumber(L, (lua_Number)it.u); return;
  case SL_MP_INT: lua_pushnumber(L, (lua_Number)it.i); return;
  case SL_MP_F32: lua_pushnumber(L, it.f); return;
  case SL_MP_F64: lua_pushnumber(L, it.d); return;
  case SL_MP_STR: case SL_MP_BIN:
    push_str(w, (const char *)it.s, it.n);
    return;
  case SL_MP_EXT: /* a fresh {type, data}: assign it back to change it */
    sl_luacodec_push(L, p, (size_t)(q - p), NULL);
    return;
  case SL_MP_ARR: case SL_MP_MAP:
    break;
  default:
    bad(w, p);
  }
  if (push_slot(L, idx, nd, E_CACHE, 0)) {
    lua_pushvalue(L, k);
    lua_rawget(L, -2);
    if (!lua_isnil(L, -1)) {
      lua_remove(L, -2);
      return;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  luaL_checkstack(L, 4, "ev.payload");
  new_node(L, vo, (uint32_t)(q - w->base), &it, nd);
  push_slot(L, idx, nd, E_CACHE, 1);
  lua_pushvalue(L, k);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int is_deleted(lua_State *L, int idx) {
  return lua_touserdata(L, idx) == (void *)&deleted_key;
}

/* If the rule wrote the key at k, push what it wrote (nil when it deleted
 * it) and return 1. */
static int written_env(lua_State *L, int idx, struct pnode *nd, int k);

static int written(lua_State *L, int idx, struct pnode *nd, int k) {
  struct wlog *wl = wlog_of(L, nd);

  if (wl != NULL) {
    struct lkey lk;
    int j;
    lkey_of(L, k, &lk);
    j = wlog_find(wl, &lk);
    if (j >= 0) {
      wlog_push(L, wl, j);
      return 1;
    }
  }
  return nd->has_env && written_env(L, idx, nd, k);
}

/* written, for what the env table holds. */
static int written_env(lua_State *L, int idx, struct pnode *nd, int k) {
  if (!push_slot(L, idx, nd, E_WRITES, 0)) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushvalue(L, k);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (is_deleted(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  return 1;
}

/* Push p[k] for the node at idx and the key at k (both absolute). */
static void get(struct walk *w, int idx, struct pnode *nd, int k) {
  struct wlog *wl;
  struct lkey lk;
  uint32_t vo;
  int j, known = 0;

  if (nd->dirty && (wl = wlog_of_b(w->b, nd)) != NULL) {
    lkey_of(w->L, k, &lk); /* read once for the log and the bytes */
    known = 1;
    if ((j = wlog_find(wl, &lk)) >= 0) {
      wlog_push(w->L, wl, j);
      return;
    }
  }
  if (nd->has_env && written_env(w->L, idx, nd, k))
    return;
  vo = find_lk(w, idx, nd, k, known ? &lk : NULL);
  if (vo == 0)
    lua_pushnil(w->L);
  else
    push_at(w, idx, nd, vo, k);
}

static int p_index(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd = node_at(L, 1, &w);
  get(&w, 1, nd, 2);
  return 1;
}

/* An array takes positions 1..len+1 (len+1 appends). Returns 0 when the
 * write is a nil past the end: nothing to record. */
static int array_check(lua_State *L, struct pnode *nd) {
  double d = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : 0;

  if (!(d >= 1 && d == floor(d) && d <= (double)nd->len + 1))
    return luaL_error(L, "ev.payload: an array takes indexes 1 to its "
                         "length + 1 (%d); got %s", (int)nd->len + 1,
                      msg_str(L, 2));
  return !(lua_isnil(L, 3) && d > nd->len);
}

/* After a write at position i was recorded in the writes at wt: an append
 * grows the array; nil at its end shrinks it, and then past positions
 * deleted before. Cannot raise, so length and writes always agree. */
static void array_len(lua_State *L, int wt, struct pnode *nd, uint32_t i) {
  if (!lua_isnil(L, 3)) {
    if (i == nd->len + 1)
      nd->len++;
    return;
  }
  if (i != nd->len)
    return;
  for (nd->len--; nd->len > 0; nd->len--) {
    lua_rawgeti(L, wt, (int)nd->len);
    if (!is_deleted(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    lua_pop(L, 1);
  }
}

static int p_newindex(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd = node_at(L, 1, &w), *q;
  int t = lua_type(L, 2);

  if (nd->is_map) {
    if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TBOOLEAN)
      return luaL_error(L, "ev.payload: a map key must be a string, number "
                           "or boolean (got %s)", luaL_typename(L, 2));
    if (t == LUA_TNUMBER && isnan(lua_tonumber(L, 2)))
      return luaL_error(L, "ev.payload: a map key cannot be NaN");
  } else if (!array_check(L, nd)) {
    return 0;
  }
  if (nd->is_map && wlog_put(L, w.b, nd, t)) {
    for (q = nd; q && !q->dirty; q = q->parent)
      q->dirty = 1;
    return 0;
  }
  push_slot(L, 1, nd, E_WRITES, 1);
  lua_pushvalue(L, 2);
  if (lua_isnil(L, 3))
    lua_pushlightuserdata(L, (void *)&deleted_key);
  else
    lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  if (!nd->is_map)
    array_len(L, lua_gettop(L), nd, (uint32_t)lua_tonumber(L, 2));
  for (q = nd; q && !q->dirty; q = q->parent)
    q->dirty = 1;
  return 0;
}

/* #p of the proxy at idx (absolute): an array's length; for a map, a
 * border as Lua's # gives one. */
static double length(struct walk *w, int idx, struct pnode *nd) {
  lua_State *L = w->L;
  double j = 0;

  if (!nd->is_map)
    return nd->len;
  for (;;) {
    tick(w);
    lua_pushnumber(L, j + 1);
    get(w, idx, nd, lua_gettop(L));
    if (lua_isnil(L, -1))
      break;
    lua_pop(L, 2);
    j++;
  }
  lua_pop(L, 2);
  return j;
}

static int p_len(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd = node_at(L, 1, &w);
  lua_pushnumber(L, length(&w, 1, nd));
  return 1;
}

/* ---- iteration -------------------------------------------------------------
 * pairs(p) walks a map's pairs in the order of the bytes (the first of keys
 * Lua cannot tell apart; keys Lua cannot hold are left out; written values
 * in place of the originals, deleted ones skipped), then the keys the rule
 * added. An array yields its positions 1..#p that are not nil. */

struct iter {
  uint32_t pos; /* byte offset of the next pair */
  uint32_t j;   /* pairs (or array positions) done */
};

/* Push the next key and value after the state it; 0 at the end. prev is
 * the key yielded last (absolute; 0 for none): the added keys follow it. */
static int step(struct walk *w, int idx, struct pnode *nd, struct iter *it,
                int prev) {
  lua_State *L = w->L;
  struct sl_codec_item key;
  int wt;

  while (it->j < (nd->is_map ? nd->n : nd->len)) {
    const uint8_t *p = w->base + it->pos;
    uint32_t vo;
    it->j++;
    tick(w);
    if (!nd->is_map) {
      lua_pushnumber(L, it->j);
      get(w, idx, nd, lua_gettop(L));
      if (!lua_isnil(L, -1))
        return 1;
      lua_pop(L, 2);
      continue;
    }
    rd_key(w, &p, &key, nd->depth + 1);
    vo = (uint32_t)(p - w->base);
    skip(w, &p, nd->depth + 1);
    it->pos = (uint32_t)(p - w->base);
    if (!push_lkey(L, &key))
      continue;
    if (find(w, idx, nd, lua_gettop(L)) != vo) { /* a later duplicate */
      lua_pop(L, 1);
      continue;
    }
    get(w, idx, nd, lua_gettop(L));
    if (!lua_isnil(L, -1))
      return 1;
    lua_pop(L, 2);
  }
  if (!nd->is_map)
    return 0;
  if (!push_slot(L, idx, nd, E_WRITES, 0)) {
    lua_pop(L, 1);
    return 0;
  }
  wt = lua_gettop(L);
  index_now(w, idx, nd);
  if (prev && it->j == nd->n + 1) /* prev was an added key */
    lua_pushvalue(L, prev);
  else
    lua_pushnil(L);
  it->j = nd->n + 1;
  while (lua_next(L, wt)) {
    tick(w);
    if (lua_type(L, -2) != LUA_TLIGHTUSERDATA && !is_deleted(L, -1) &&
        find(w, idx, nd, lua_gettop(L) - 1) == 0) {
      lua_remove(L, wt);
      return 1;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

/* The iterator pairs(p) returns: upvalue 1 is its struct iter, upvalue 2
 * p. A rule can call it by hand with anything: its state fits p only. */
static int p_pairs_next(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd;
  struct iter *it = lua_touserdata(L, lua_upvalueindex(1));

  if (!lua_rawequal(L, 1, lua_upvalueindex(2)))
    return luaL_error(L, "the iterator of pairs(p) walks p only");
  nd = node_at(L, 1, &w);

  lua_settop(L, 2);
  return step(&w, 1, nd, it, 2) ? 2 : 0;
}

/* next(p, k): from the start each time (use pairs for a long walk). */
static int p_next(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd = node_at(L, 1, &w);
  struct iter it = {nd->body, 0};
  int top;

  lua_settop(L, 2);
  top = 2;
  if (lua_isnil(L, 2))
    return step(&w, 1, nd, &it, 0) ? 2 : 0;
  if (nd->is_map && (nd->has_env || nd->dirty) && find(&w, 1, nd, 2) == 0) {
    it.j = nd->n + 1; /* an added key: the rest follow it */
    return step(&w, 1, nd, &it, 2) ? 2 : 0;
  }
  if (!nd->is_map) { /* an array goes on from the position */
    lua_Number d = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : 0;
    if (!(d >= 1 && d <= nd->len && d == floor(d)))
      return luaL_error(L, "invalid key to 'next'");
    it.j = (uint32_t)d;
    return step(&w, 1, nd, &it, 0) ? 2 : 0;
  }
  while (step(&w, 1, nd, &it, 0)) {
    int was = lua_rawequal(L, top + 1, 2);
    lua_settop(L, top);
    if (was)
      return step(&w, 1, nd, &it, 2) ? 2 : 0;
  }
  return luaL_error(L, "invalid key to 'next'");
}

static int p_ipairs_next(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd;

  if (!sl_proxy_is(L, 1)) /* called by hand with something else */
    return luaL_argerror(L, 1, "expected a part of ev.payload");
  nd = node_at(L, 1, &w);
  lua_Number i = luaL_checknumber(L, 2) + 1;

  lua_settop(L, 1);
  lua_pushnumber(L, i);
  get(&w, 1, nd, 2);
  return lua_isnil(L, -1) ? 0 : 2;
}

/* ---- writing out: the original bytes, changed entries re-encoded ---------- */

struct sctx {
  struct walk w;
  struct sl_buf *out;
  size_t start, max;
  const char *what;
  const uint8_t *run, *run_end; /* original bytes still to copy */
};

/* Raise unless n more bytes keep the output within max. */
static void room(struct sctx *s, size_t n) {
  if (n > s->max || s->out->len - s->start > s->max - n)
    luaL_error(s->w.L, "%s is larger than %d bytes", s->what,
               s->max > INT32_MAX ? INT32_MAX : (int)s->max);
}

static void put(struct sctx *s, const void *p, size_t n) {
  room(s, n);
  if (sl_buf_append(s->out, p, n) != 0)
    luaL_error(s->w.L, "not enough memory");
}

static void flush(struct sctx *s) {
  if (s->run != NULL)
    put(s, s->run, (size_t)(s->run_end - s->run));
  s->run = s->run_end = NULL;
}

/* Copy the original bytes [p, q): runs of them in one append. */
static void keep(struct sctx *s, const uint8_t *p, const uint8_t *q) {
  if (s->run_end != p) {
    flush(s);
    s->run = p;
  }
  s->run_end = q;
}

static void write_node(struct sctx *s, int idx, int depth);

/* Is the Lua value at v the one the original scalar at p decodes to (as
 * the decoder's side records said: then its type stays)? */
static int same_scalar(lua_State *L, int v, const uint8_t *p,
                       const uint8_t *end) {
  struct sl_codec_item it;

  if (sl_codec_read_item(&p, end, &it) != 0)
    return 0;
  return key_is(L, v, &it); /* the same comparison as for keys */
}

/* Write the value at v (absolute) the rule put where the original [p, q)
 * was (p NULL: a new entry). */
static void write_val(struct sctx *s, int v, const uint8_t *p,
                      const uint8_t *q, int depth) {
  lua_State *L = s->w.L;

  if (p && same_scalar(L, v, p, q)) {
    keep(s, p, q);
    return;
  }
  flush(s);
  if (lua_type(L, v) == LUA_TSTRING) { /* the common cases, directly */
    size_t n;
    const char *str = lua_tolstring(L, v, &n);
    room(s, n + 5);
    if (sl_codec_put_str(s->out, str, n) != 0)
      luaL_error(L, "not enough memory");
    return;
  }
  if (lua_type(L, v) == LUA_TBOOLEAN) {
    put(s, lua_toboolean(L, v) ? "\xc3" : "\xc2", 1);
    return;
  }
  if (sl_proxy_is(L, v)) {
    write_node(s, v, depth);
    return;
  }
  sl_luacodec_encode_at(L, v, s->out, check_cpu,
                        s->max - (s->out->len - s->start), s->what, depth);
}

/* If the cache at ct holds a changed child proxy under the key at k for
 * the value at offset vo, push it and return 1. */
static int dirty_child(lua_State *L, int ct, int k, uint32_t vo) {
  struct pnode *c;

  if (lua_isnil(L, ct))
    return 0;
  lua_pushvalue(L, k);
  lua_rawget(L, ct);
  c = sl_proxy_is(L, -1) ? lua_touserdata(L, -1) : NULL;
  if (c && c->dirty && c->off == vo)
    return 1;
  lua_pop(L, 1);
  return 0;
}

/* A changed map's writes and changed children, gathered onto the stack
 * when there are few: each pair is then matched by comparing bytes, with
 * no Lua key made for it. n or nc is -1 when there are more. */
struct plan {
  int n, at[FEW];         /* written keys: stack index (value above) */
  struct lkey key[FEW];   /* ... read once */
  uint32_t first[FEW];    /* offset of the value of their first pair, as
                             met; 0 until then (after all: an added key) */
  int nc, child[FEW];     /* changed child proxies: stack index */
  uint32_t coff[FEW];     /* ... and offset */
};

static void gather(struct sctx *s, int idx, struct pnode *nd,
                   struct plan *pl) {
  lua_State *L = s->w.L;
  struct pnode *c;
  int t;

  pl->n = pl->nc = 0;
  if (!nd->has_env)
    return;
  luaL_checkstack(L, 4 * FEW + 8, "ev.payload");
  push_env(L, idx, nd);
  t = lua_gettop(L);
  lua_pushnil(L); /* the cache, found on the way (no second lookup) */
  lua_pushnil(L);
  while (lua_next(L, t)) { /* keeps each key and value, goes on from a copy */
    if (lua_type(L, -2) == LUA_TLIGHTUSERDATA) {
      if (lua_touserdata(L, -2) == (void *)&slot_keys[E_CACHE])
        lua_replace(L, t + 1);
      else
        lua_pop(L, 1);
      continue;
    }
    if (pl->n == FEW) {
      pl->n = -1;
      lua_pop(L, 2);
      break;
    }
    pl->at[pl->n] = lua_gettop(L) - 1;
    lkey_of(L, lua_gettop(L) - 1, &pl->key[pl->n]);
    pl->first[pl->n++] = 0;
    lua_pushvalue(L, -2);
  }
  if (pl->n < 0 && lua_isnil(L, t + 1)) { /* stopped before meeting it */
    push_slot(L, idx, nd, E_CACHE, 0);
    lua_replace(L, t + 1);
  }
  t++;
  lua_pushnil(L);
  while (!lua_isnil(L, t) && lua_next(L, t)) {
    c = sl_proxy_is(L, -1) ? lua_touserdata(L, -1) : NULL;
    if (c == NULL || !c->dirty) {
      lua_pop(L, 1);
      continue;
    }
    if (pl->nc == FEW) {
      pl->nc = -1;
      lua_pop(L, 2);
      break;
    }
    pl->child[pl->nc] = lua_gettop(L);
    pl->coff[pl->nc++] = c->off;
    lua_pushvalue(L, -2);
  }
}

enum { KEEP, WRITE, DROP, CHILD };

/* What becomes of the pair whose key is key and whose value is at vo:
 * *vi is the stack index of what to write for WRITE and CHILD. May push
 * (the caller resets the stack). */
static int decide(struct sctx *s, int idx, struct pnode *nd,
                  struct plan *pl, const struct sl_codec_item *key,
                  uint32_t vo, int *vi) {
  lua_State *L = s->w.L;
  int j, k = 0;

  if (pl->n < 0 || pl->nc < 0) {
    if (!push_lkey(L, key))
      return KEEP;
    k = lua_gettop(L);
  }
  if (pl->n >= 0) {
    for (j = 0; j < pl->n; j++)
      if (lkey_is(&pl->key[j], key)) { /* pairs come in order */
        *vi = pl->at[j] + 1;
        if (pl->first[j] == 0)
          pl->first[j] = vo;
        return pl->first[j] != vo || is_deleted(L, *vi) ? DROP : WRITE;
      }
  } else if (written(L, idx, nd, k)) {
    *vi = lua_gettop(L);
    return find(&s->w, idx, nd, k) != vo || lua_isnil(L, *vi) ? DROP : WRITE;
  }
  if (pl->nc >= 0) {
    for (j = 0; j < pl->nc; j++)
      if (pl->coff[j] == vo) {
        *vi = pl->child[j];
        return CHILD;
      }
    return KEEP;
  }
  push_slot(L, idx, nd, E_CACHE, 0);
  if (!dirty_child(L, lua_gettop(L), k, vo))
    return KEEP;
  *vi = lua_gettop(L);
  return CHILD;
}

/* The keys the rule added to a map (after its pairs), in the order of
 * sl_luacodec_key_less (the env table's own order follows string hashes
 * LuaJIT seeds per state); returns how many. */
static uint32_t write_added(struct sctx *s, int idx, struct pnode *nd,
                            const struct plan *pl, int depth) {
  lua_State *L = s->w.L;
  uint32_t count = 0, n = 0, i;
  int j, k, m, ord[FEW], env, ks;

  for (j = 0; j < pl->n; j++) /* an insertion sort of at most FEW */
    if (pl->first[j] == 0 && !is_deleted(L, pl->at[j] + 1)) {
      for (m = (int)n; m > 0 && sl_luacodec_key_less(L, pl->at[j],
                                                     pl->at[ord[m - 1]]); m--)
        ord[m] = ord[m - 1];
      ord[m] = j;
      n++;
    }
  for (i = 0; i < n; i++) {
    const struct lkey *lk = &pl->key[ord[i]];
    j = ord[i];
    if (lk->t == LUA_TSTRING) { /* read once already: no Lua calls */
      flush(s);
      room(s, lk->n + 5);
      if (sl_codec_put_str(s->out, lk->s, lk->n) != 0)
        luaL_error(L, "not enough memory");
    } else {
      write_val(s, pl->at[j], NULL, NULL, 0);
    }
    write_val(s, pl->at[j] + 1, NULL, NULL, depth + 1);
    count++;
  }
  if (pl->n >= 0)
    return count;
  push_env(L, idx, nd);
  env = lua_gettop(L);
  index_now(&s->w, idx, nd);
  lua_newtable(L);
  ks = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, env)) {
    k = lua_gettop(L) - 1;
    tick(&s->w);
    if (lua_type(L, k) != LUA_TLIGHTUSERDATA && !is_deleted(L, k + 1) &&
        find(&s->w, idx, nd, k) == 0) {
      lua_pushvalue(L, k);
      lua_rawseti(L, ks, (int)++n);
    }
    lua_settop(L, k);
  }
  sl_luacodec_sort_keys(L, ks, n, check_cpu);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, ks, (int)i);
    k = lua_gettop(L);
    lua_pushvalue(L, k);
    lua_rawget(L, env);
    write_val(s, k, NULL, NULL, 0);
    write_val(s, k + 1, NULL, NULL, depth + 1);
    count++;
    lua_settop(L, ks);
  }
  lua_settop(L, env - 1);
  return count;
}

/* Pairs of a changed map; returns how many were written. */
static uint32_t write_map(struct sctx *s, int idx, struct pnode *nd,
                          int depth) {
  lua_State *L = s->w.L;
  const uint8_t *p = s->w.base + nd->body;
  int top = lua_gettop(L), base, vi;
  struct plan pl;
  uint32_t i, count = 0;

  gather(s, idx, nd, &pl);
  base = lua_gettop(L);
  for (i = 0; i < nd->n; i++) {
    const uint8_t *k0 = p, *v0;
    struct sl_codec_item key;
    rd_key(&s->w, &p, &key, nd->depth + 1);
    v0 = p;
    skip(&s->w, &p, nd->depth + 1);
    switch (decide(s, idx, nd, &pl, &key, (uint32_t)(v0 - s->w.base), &vi)) {
    case KEEP:
      keep(s, k0, p);
      break;
    case WRITE:
      keep(s, k0, v0);
      write_val(s, vi, v0, p, depth + 1);
      break;
    case CHILD:
      keep(s, k0, v0);
      flush(s);
      write_node(s, vi, depth + 1);
      break;
    default: /* DROP: deleted, or a later pair of a key written once */
      count--;
    }
    count++;
    if (lua_gettop(L) != base) /* most pairs push nothing */
      lua_settop(L, base);
  }
  count += write_added(s, idx, nd, &pl, depth);
  lua_settop(L, top);
  return count;
}

/* Write the Lua key or value lk (entry j's, slot 1 key or 2 value of the
 * anchor) where the original [p, q) was (p NULL: a new entry). */
static void write_logged(struct sctx *s, const struct wlog *wl, int j,
                         int slot, const struct lkey *lk, const uint8_t *p,
                         const uint8_t *q, int depth) {
  lua_State *L = s->w.L;
  struct sl_codec_item it;
  const uint8_t *r = p;

  if (p && sl_codec_read_item(&r, q, &it) == 0 && lkey_is(lk, &it)) {
    keep(s, p, q); /* the same value: its type stays */
    return;
  }
  flush(s);
  if (lk->t == LUA_TSTRING) {
    room(s, lk->n + 5);
    if (sl_codec_put_str(s->out, lk->s, lk->n) != 0)
      luaL_error(L, "not enough memory");
  } else if (lk->t == LUA_TBOOLEAN) {
    put(s, lk->d != 0 ? "\xc3" : "\xc2", 1);
  } else { /* a number: as the encoder writes it */
    lua_rawgeti(L, LUA_REGISTRYINDEX, wl->ref_anchor);
    lua_rawgeti(L, -1, 2 * j + slot);
    write_val(s, lua_gettop(L), NULL, NULL, depth);
    lua_pop(L, 2);
  }
}

/* Pairs of the root map whose changes are all in the log (no env table):
 * write_map without Lua tables. Returns how many pairs were written. */
static uint32_t write_map_log(struct sctx *s, struct pnode *nd,
                              const struct wlog *wl, int depth) {
  const uint8_t *p = s->w.base + nd->body;
  uint32_t first[FEW], i, count = 0;
  int j;

  for (j = 0; j < wl->n; j++)
    first[j] = 0;
  for (i = 0; i < nd->n; i++) {
    const uint8_t *k0 = p, *v0;
    struct sl_codec_item key;
    uint32_t vo;
    rd_key(&s->w, &p, &key, nd->depth + 1);
    v0 = p;
    vo = (uint32_t)(v0 - s->w.base);
    skip(&s->w, &p, nd->depth + 1);
    count++;
    for (j = 0; j < wl->n && !lkey_is(&wl->e[j].key, &key); j++)
      ;
    if (j == wl->n) {
      keep(s, k0, p);
      continue;
    }
    if (first[j] == 0) /* pairs come in order: the first is written */
      first[j] = vo;
    if (first[j] != vo || wl->e[j].val.t == LUA_TNIL) {
      count--; /* deleted, or a later pair of a key written once */
      continue;
    }
    keep(s, k0, v0);
    write_logged(s, wl, j, 2, &wl->e[j].val, v0, p, depth + 1);
  }
  for (j = 0; j < wl->n; j++)
    if (first[j] == 0 && wl->e[j].val.t != LUA_TNIL) { /* added keys */
      write_logged(s, wl, j, 1, &wl->e[j].key, NULL, NULL, 0);
      write_logged(s, wl, j, 2, &wl->e[j].val, NULL, NULL, depth + 1);
      count++;
    }
  return count;
}

/* Elements of a changed array; returns how many were written. */
static uint32_t write_array(struct sctx *s, int idx, struct pnode *nd,
                            int depth) {
  lua_State *L = s->w.L;
  const uint8_t *p = s->w.base + nd->body;
  int top = lua_gettop(L), wt = top + 1, ct = top + 2;
  uint32_t i;

  push_slot(L, idx, nd, E_WRITES, 0);
  push_slot(L, idx, nd, E_CACHE, 0);
  for (i = 1; i <= nd->len; i++) {
    const uint8_t *v0 = p;
    if (i <= nd->n)
      skip(&s->w, &p, nd->depth + 1);
    else
      tick(&s->w);
    lua_pushnumber(L, i);
    if (!lua_isnil(L, wt)) {
      lua_pushvalue(L, -1);
      lua_rawget(L, wt);
      if (!lua_isnil(L, -1)) {
        if (is_deleted(L, -1)) {
          flush(s);
          put(s, "\xc0", 1);
        } else {
          write_val(s, lua_gettop(L), i <= nd->n ? v0 : NULL, p, depth + 1);
        }
        lua_settop(L, ct);
        continue;
      }
      lua_pop(L, 1);
    }
    if (i > nd->n) { /* a position past the bytes, never written: nil */
      flush(s);
      put(s, "\xc0", 1);
    } else if (dirty_child(L, ct, lua_gettop(L), (uint32_t)(v0 - s->w.base))) {
      flush(s);
      write_node(s, lua_gettop(L), depth + 1);
    } else {
      keep(s, v0, p);
    }
    lua_settop(L, ct);
  }
  lua_settop(L, top);
  return nd->len;
}

/* The header of a written container: the original one when the count is
 * the same (the bytes stay as they came), else the smallest. */
static void write_header(struct sctx *s, size_t at, struct pnode *nd,
                         uint32_t count) {
  struct sl_buf *b = s->out;
  size_t hl = nd->body - nd->off;

  if (count != nd->n) {
    sl_codec_patch_header(b, at, nd->is_map, count);
    return;
  }
  memmove(b->data + at + hl, b->data + at + 5, b->len - at - 5);
  memcpy(b->data + at, s->w.base + nd->off, hl);
  b->len -= 5 - hl;
}

static void write_node(struct sctx *s, int idx, int depth) {
  lua_State *L = s->w.L;
  struct pnode *nd = node_at(L, idx, &s->w);
  const uint8_t *p = s->w.base + nd->off;
  const struct wlog *wl;
  uint32_t count;
  size_t at;

  if (depth >= SL_CODEC_MAX_DEPTH)
    luaL_error(L, "cannot encode: nesting deeper than %d (a cycle?)",
               SL_CODEC_MAX_DEPTH);
  if (!nd->dirty) {
    skip(&s->w, &p, nd->depth);
    keep(s, s->w.base + nd->off, p);
    return;
  }
  luaL_checkstack(L, 12, "ev.payload");
  flush(s);
  at = s->out->len;
  put(s, "\0\0\0\0\0", 5);
  if (!nd->is_map)
    count = write_array(s, idx, nd, depth);
  else if (!nd->has_env && (wl = wlog_of(L, nd)) != NULL)
    count = write_map_log(s, nd, wl, depth);
  else
    count = write_map(s, idx, nd, depth);
  flush(s);
  write_header(s, at, nd, count);
}

void sl_proxy_write(lua_State *L, int idx, struct sl_buf *out, int depth,
                    size_t max, const char *what) {
  struct sctx s;

  if (idx < 0 && idx > LUA_REGISTRYINDEX)
    idx = lua_gettop(L) + idx + 1;
  memset(&s, 0, sizeof(s));
  s.w.L = L;
  s.out = out;
  s.start = out->len;
  s.max = max;
  s.what = what ? what : "the value";
  write_node(&s, idx, depth);
  flush(&s);
}

/* ---- the rest of the interface -------------------------------------------- */

int sl_proxy_is(lua_State *L, int idx) {
  int is, t = lua_type(L, idx);

  if (t == LUA_TLIGHTUSERDATA) /* a root, stale or not */
    return is_root_ud(lua_touserdata(L, idx));
  if (t != LUA_TUSERDATA || !lua_getmetatable(L, idx))
    return 0;
  lua_rawgeti(L, -1, 1); /* the metatable's mark: only C sets a userdata's */
  is = lua_touserdata(L, -1) == (void *)&mt_key;
  lua_pop(L, 2);
  return is;
}

int sl_proxy_untouched(lua_State *L, int idx) {
  struct pnode *nd;

  struct box *b = box_of(L);

  if (lua_type(L, idx) != LUA_TLIGHTUSERDATA)
    return 0; /* only roots are roots */
  nd = lua_touserdata(L, idx);
  return is_root_ud(nd) && (uint32_t)(uintptr_t)nd == b->pgen &&
         b->proot != NULL && !root_of(b)->dirty;
}

int sl_proxy_is_root(lua_State *L, int idx) {
  struct box *b = box_of(L);
  void *v;

  if (b->proot == NULL || lua_type(L, idx) != LUA_TLIGHTUSERDATA)
    return 0;
  v = lua_touserdata(L, idx);
  return is_root_ud(v) && (uint32_t)(uintptr_t)v == b->pgen;
}

int sl_proxy_clean(const void *p) {
  return !((const struct pnode *)p)->dirty;
}

void sl_proxy_push_again(lua_State *L, const struct box *b) {
  lua_pushlightuserdata(L, (void *)(uintptr_t)(((uint64_t)ROOT_TAG << 32) |
                                               b->pgen));
}

int sl_proxy_begin_root(struct box *b, const uint8_t *p, size_t len) {
  const uint8_t *q = p;
  struct sl_codec_item it;

  if (len > 0 && (*p & 0xe0) == 0x80 && /* fixmap, fixarray: most */
      (size_t)(*p & 0x0f) * (*p < 0x90 ? 2 : 1) <= len - 1) {
    it.t = *p < 0x90 ? SL_MP_MAP : SL_MP_ARR; /* checked as read_item */
    it.n = *p & 0x0f;                          /* checks a count */
    q = p + 1;
  } else if (sl_codec_read_item(&q, p + len, &it) != 0 ||
             (it.t != SL_MP_MAP && it.t != SL_MP_ARR)) {
    return -1;
  }
  init_node(b, root_of(b), 0, (uint32_t)(q - p), &it, NULL);
  b->proot = root_of(b);
  ((struct wlog *)b->pwlog)->n = 0;
  /* its tree lives in the registry (the root's env, spare_key) until a
   * later event's root needs an env and empties it */
  return 0;
}

void sl_proxy_push_root(lua_State *L, const uint8_t *p, size_t len) {
  if (sl_proxy_begin_root(box_of(L), p, len) != 0)
    luaL_error(L, "ev.payload: not a map or array");
  sl_proxy_push_again(L, box_of(L));
}

const char *sl_proxy_kind(lua_State *L, int idx, int kidx) {
  static const char *const names[] = {
      "nil", "boolean", "int", "int", "float32", "float", "string", "binary",
      "array", "map", "ext", "nil"};
  struct walk w = {0};
  struct pnode *nd = node_at(L, idx, &w);
  const uint8_t *p;
  struct sl_codec_item it;
  uint32_t vo;

  if (kidx == 0)
    return nd->is_map ? "map" : "array";
  vo = find(&w, idx, nd, kidx);
  if ((nd->has_env || nd->dirty) && written(L, idx, nd, kidx)) {
    if (vo == 0 || lua_isnil(L, -1) ||
        !same_scalar(L, lua_gettop(L), w.base + vo, w.end))
      return NULL; /* the value stays pushed: plain rules name it */
    lua_pop(L, 1);
  }
  if (vo == 0)
    return "nil";
  p = w.base + vo;
  rd(&w, &p, &it);
  return names[it.t];
}

/* The function the sandbox replaced (upvalue 1), for values that are not
 * proxies. */
static int call_orig(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE); /* here, so the error names the caller */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int l_pairs(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd;
  struct iter *it;

  if (!sl_proxy_is(L, 1))
    return call_orig(L);
  nd = node_at(L, 1, &w);
  it = lua_newuserdata(L, sizeof(*it));
  it->pos = nd->body;
  it->j = 0;
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, p_pairs_next, 2);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int l_ipairs(lua_State *L) {
  if (!sl_proxy_is(L, 1))
    return call_orig(L);
  lua_pushcfunction(L, p_ipairs_next);
  lua_pushvalue(L, 1);
  lua_pushnumber(L, 0);
  return 3;
}

static int l_next(lua_State *L) {
  if (!sl_proxy_is(L, 1))
    return call_orig(L);
  return p_next(L);
}

/* type(p) is "table": code written for decoded payloads keeps working. */
static int l_type(lua_State *L) {
  luaL_checkany(L, 1);
  if ((lua_type(L, 1) == LUA_TUSERDATA ||
       lua_type(L, 1) == LUA_TLIGHTUSERDATA) && sl_proxy_is(L, 1))
    lua_pushliteral(L, "table");
  else
    lua_pushstring(L, luaL_typename(L, 1));
  return 1;
}

static int buf_gc(lua_State *L) {
  sl_buf_close(lua_touserdata(L, 1));
  return 0;
}

/* sluice.copy(v): v as plain Lua values with exact types (what decoding
 * gave before proxies), to keep past on_event or hand to table.sort.
 * The buffer is the state's one (sl_proxy_open): one a raise leaves full
 * is reused by the next copy. A new userdata per copy left its C memory
 * (up to max_event_bytes) to the collector, which a tiny userdata does not
 * hurry: 100 failing copies in a loop held 96 MB after the call. */
int sl_proxy_copy(lua_State *L) {
  struct box *b = box_of(L);
  struct sl_buf *buf;

  luaL_checkany(L, 1);
  lua_settop(L, 1);
  lua_pushlightuserdata(L, (void *)&buf_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  buf = lua_touserdata(L, 2);
  sl_buf_reset(buf);
  sl_luacodec_encode_max(L, 1, buf, check_cpu, b->rule->max_event_bytes,
                         "sluice.copy: the value (max_event_bytes)");
  sl_luacodec_push(L, buf->data, buf->len, check_cpu);
  sl_buf_shrink(buf);
  return 1;
}

void sl_proxy_open(lua_State *L, int env) {
  static const luaL_Reg wrap[] = {{"pairs", l_pairs}, {"ipairs", l_ipairs},
                                  {"next", l_next}, {NULL, NULL}};
  const luaL_Reg *f;

  lua_pushlightuserdata(L, (void *)&mt_key);
  lua_createtable(L, 1, 4);
  lua_pushlightuserdata(L, (void *)&mt_key);
  lua_rawseti(L, -2, 1);
  lua_pushcfunction(L, p_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, p_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, p_len);
  lua_setfield(L, -2, "__len");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
  lua_rawset(L, LUA_REGISTRYINDEX);
  {
    struct box *b = box_of(L);
    struct wlog *wl = lua_newuserdata(L, sizeof(*wl)); /* lives with L */
    memset(wl, 0, sizeof(*wl));
    luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 2 * FEW, 0);
    for (int j = 1; j <= 2 * FEW; j++) { /* the slots exist: no allocation */
      lua_pushboolean(L, 0);
      lua_rawseti(L, -2, j);
    }
    wl->ref_anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, (void *)&mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    wl->ref_mt = luaL_ref(L, LUA_REGISTRYINDEX);
    for (int j = 0; j < SCACHE_N; j++) {
      lua_pushboolean(L, 0);
      wl->sc[j].ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    b->pwlog = wl;
  }
  lua_pushlightuserdata(L, (void *)&buf_key);
  sl_buf_init(lua_newuserdata(L, sizeof(struct sl_buf)));
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, buf_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  for (f = wrap; f->name; f++) {
    lua_getfield(L, env, f->name);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, env, f->name);
  }
  lua_pushcfunction(L, l_type);
  lua_setfield(L, env, "type");
}

/* tostring of a light userdata: a root names itself (a root has no
 * address to hide, and the sandbox's tostring would keep an id per value,
 * so per event), others as before (upvalue 1). */
static int l_light_tostring(lua_State *L) {
  if (sl_proxy_is(L, 1)) {
    lua_pushliteral(L, "table: ev.payload");
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

void sl_proxy_light_mt(lua_State *L, int mt) {
  lua_pushcfunction(L, p_index);
  lua_setfield(L, mt, "__index");
  lua_pushcfunction(L, p_newindex);
  lua_setfield(L, mt, "__newindex");
  lua_pushcfunction(L, p_len);
  lua_setfield(L, mt, "__len");
  lua_getfield(L, mt, "__tostring");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_getglobal(L, "tostring");
  }
  lua_pushcclosure(L, l_light_tostring, 1);
  lua_setfield(L, mt, "__tostring");
}

/* ---- the table library on proxies -----------------------------------------
 * table.insert and table.remove move elements through the proxy; concat,
 * unpack and sort work on a plain copy of p[1..#p] (sort then writes the
 * order back), so the library's own bounds apply. */

void sl_proxy_plain_at_1(lua_State *L) {
  struct walk w = {0};
  struct pnode *nd = node_at(L, 1, &w);
  double i, n = length(&w, 1, nd);
  int t;

  lua_createtable(L, n < 65536 ? (int)n : 0, 0);
  t = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    tick(&w);
    lua_pushnumber(L, i);
    get(&w, 1, nd, t + 1);
    lua_rawseti(L, t, (int)i);
    lua_pop(L, 1);
  }
  lua_replace(L, 1);
}

/* unpack and table.remove: upvalue 1 is the function for plain tables. */
static int t_plain(lua_State *L) {
  if (sl_proxy_is(L, 1))
    sl_proxy_plain_at_1(L);
  return call_orig(L);
}

int sl_proxy_sort(lua_State *L) {
  int i, n;

  lua_settop(L, 3);
  lua_pushvalue(L, 1); /* 4: the proxy */
  sl_proxy_plain_at_1(L);
  lua_pushvalue(L, 3);
  lua_pushvalue(L, 1);
  if (lua_isnil(L, 2)) {
    lua_call(L, 1, 0);
  } else {
    lua_pushvalue(L, 2);
    lua_call(L, 2, 0);
  }
  n = (int)lua_objlen(L, 1);
  for (i = 1; i <= n; i++) {
    if ((i & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
      check_cpu(L);
    lua_pushnumber(L, i);
    lua_rawgeti(L, 1, i);
    lua_settable(L, 4);
  }
  return 0;
}

/* p[to] = p[from] through the proxy at 1. */
static void move(lua_State *L, double from, double to, unsigned *steps) {
  if ((++*steps & (SL_LUACODEC_CHECK_STEPS - 1)) == 0)
    check_cpu(L);
  lua_pushnumber(L, to);
  lua_pushnumber(L, from);
  lua_gettable(L, 1);
  lua_settable(L, 1);
}

int sl_proxy_insert(lua_State *L) {
  struct walk w = {0};
  unsigned steps = 0;
  double n, pos, i;

  n = length(&w, 1, node_at(L, 1, &w));
  if (lua_gettop(L) == 2) {
    lua_pushnumber(L, n + 1);
    lua_pushvalue(L, 2);
    lua_settable(L, 1);
    return 0;
  }
  if (lua_gettop(L) != 3)
    return luaL_error(L, "wrong number of arguments to 'insert'");
  pos = luaL_checknumber(L, 2);
  if (pos < 1 || pos > n + 1 || pos != floor(pos))
    return luaL_argerror(L, 2, "position out of bounds");
  for (i = n; i >= pos; i--)
    move(L, i, i + 1, &steps);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_settable(L, 1);
  return 0;
}

static int t_remove(lua_State *L) {
  struct walk w = {0};
  unsigned steps = 0;
  double n, pos, i;

  if (!sl_proxy_is(L, 1))
    return call_orig(L);
  n = length(&w, 1, node_at(L, 1, &w));
  pos = luaL_optnumber(L, 2, n);
  if (n == 0 && lua_isnoneornil(L, 2))
    return 0;
  if (pos < 1 || pos > n || pos != floor(pos))
    return luaL_argerror(L, 2, "position out of bounds");
  lua_settop(L, 1);
  lua_pushnumber(L, pos);
  lua_gettable(L, 1); /* 2: the value removed */
  for (i = pos; i < n; i++)
    move(L, i + 1, i, &steps);
  lua_pushnumber(L, n);
  lua_pushnil(L);
  lua_settable(L, 1);
  return 1;
}

void sl_proxy_open_table(lua_State *L, int env) {
  lua_getfield(L, env, "table");
  lua_getfield(L, -1, "remove");
  lua_pushcclosure(L, t_remove, 1);
  lua_setfield(L, -2, "remove");
  lua_pop(L, 1);
  lua_getfield(L, env, "unpack");
  lua_pushcclosure(L, t_plain, 1);
  lua_setfield(L, env, "unpack");
}

/* ---- the write log spliced straight into the changed event ----------------
 * finish's path for the most common change (top-level scalars set on the
 * root map, nothing else touched): one walk over the root's pairs finds
 * where the logged keys are, then the new payload is written once, in the
 * new event's block, as runs of the original bytes and the logged values.
 * It neither calls Lua nor raises; whatever it does not cover goes the
 * general way (sl_proxy_write), which also reports every error. */

#define PLAN_MAX 65536 /* payloads walked here without ticking the budget */

/* Encode the logged key or value lk at d (NULL: only measure); its bytes
 * are the encoder's (luacodec: an integral number in range is an int). */
static size_t enc_lkey(const struct lkey *lk, uint8_t *d) {
  uint8_t tmp[9];
  double v = lk->d;
  size_t h;

  switch (lk->t) {
  case LUA_TSTRING:
    if (lk->n < 32) { /* a fixstr, as the packer writes it */
      if (d) {
        *d = (uint8_t)(0xa0 | lk->n);
        memcpy(d + 1, lk->s, lk->n);
      }
      return 1 + lk->n;
    }
    h = sl_codec_pack_strhdr(d ? d : tmp, lk->n);
    if (d)
      memcpy(d + h, lk->s, lk->n);
    return h + lk->n;
  case LUA_TBOOLEAN:
    if (d)
      *d = v != 0 ? 0xc3 : 0xc2;
    return 1;
  default: /* LUA_TNUMBER */
    if (v == floor(v) && v >= -9223372036854775808.0 &&
        v < 18446744073709551616.0 && !(v == 0 && signbit(v)))
      return v < 0 ? sl_codec_pack_int(d ? d : tmp, (int64_t)v)
                   : sl_codec_pack_uint(d ? d : tmp, (uint64_t)v);
    return sl_codec_pack_double(d ? d : tmp, v);
  }
}

/* Does entry j's key stand for the map key at *pp? Steps past the key;
 * -1 for a key this walk leaves to the general path. */
static int plan_key(const struct wlog *wl, const uint8_t **pp,
                    const uint8_t *end) {
  const uint8_t *p = *pp;
  struct sl_codec_item it;
  int j;

  if ((*p & 0xe0) == 0xa0 && (size_t)(*p & 0x1f) < (size_t)(end - p)) {
    size_t n = *p & 0x1f; /* a fixstr: most keys */
    *pp = p + 1 + n;
    for (j = 0; j < wl->n; j++)
      if (wl->e[j].key.t == LUA_TSTRING && wl->e[j].key.n == n &&
          memcmp(wl->e[j].key.s, p + 1, n) == 0)
        return j;
    return wl->n;
  }
  if (sl_codec_read_item(pp, end, &it) != 0 || it.t == SL_MP_ARR ||
      it.t == SL_MP_MAP)
    return -1; /* a container key: rare, and Lua cannot name it */
  for (j = 0; j < wl->n && !lkey_is(&wl->e[j].key, &it); j++)
    ;
  return j;
}

/* An upper bound of entry j's key or value as enc_lkey writes it. */
static size_t enc_max(const struct lkey *lk) {
  return lk->t == LUA_TSTRING ? lk->n + 5 : 9;
}

long sl_proxy_log_bound(struct box *b) {
  struct wlog *wl = b->pwlog;
  struct pnode *nd = b->proot;
  size_t n;
  int j;

  if (wl == NULL || nd == NULL || wl->n == 0 || nd->has_env || !nd->is_map ||
      nd->gen != b->pgen || b->ev == NULL || b->ev->payload_len > PLAN_MAX)
    return -1;
  n = b->ev->payload_len + 4; /* a header may grow by 4 bytes */
  wl->lens = 0;
  for (j = 0; j < wl->n; j++) {
    n += enc_max(&wl->e[j].key) + enc_max(&wl->e[j].val);
    if (wl->e[j].key.t == LUA_TSTRING && wl->e[j].key.n < 32)
      wl->lens |= 1u << wl->e[j].key.n;
  }
  wl->failed = 0;
  wl->changed = 0;
  return (long)n;
}

/* The pairs of the root after its header, spliced at d (the new header's
 * place is left to the caller): returns the end, with *count the new
 * number of pairs, or NULL for a payload this walk leaves to the general
 * path (a container key, a written key twice in the bytes). */
static uint8_t *log_pairs(struct box *b, struct wlog *wl, uint8_t *d,
                          uint32_t *count) {
  const struct pnode *nd = b->proot;
  const uint8_t *base = b->ev->data + b->ev->payload_off;
  const uint8_t *end = base + b->ev->payload_len, *p = base + nd->body;
  const uint8_t *pos = p, *k0, *v0, *q;
  struct sl_codec_item it;
  unsigned seen = 0;
  uint32_t i, n = nd->n, lens = wl->lens;
  size_t fl, used, kn;
  int j, nlog = wl->n;

  for (i = 0; i < nd->n; i++) {
    k0 = p;
    if (p >= end)
      return NULL;
    kn = *p & 0x1fu;
    if ((*p & 0xe0) == 0xa0 && kn + 1 < (size_t)(end - p) &&
        !(lens & (1u << kn))) {
      p += 1 + kn; /* a fixstr no logged key is as long as: most pairs */
      j = nlog;
    } else if ((j = plan_key(wl, &p, end)) < 0 || p >= end) {
      return NULL;
    }
    v0 = p;
    if ((fl = flat_len(p, end)) != 0)
      p += fl;
    else if (sl_codec_skip(p, (size_t)(end - p), (size_t)(end - p), &used,
                           NULL) == 0)
      p += used;
    else
      return NULL;
    if (j == nlog)
      continue;
    if (seen & (1u << j))
      return NULL; /* a later pair of a written key: the general path */
    seen |= 1u << j;
    q = v0;
    if (wl->e[j].val.t == LUA_TNIL) { /* deleted: the pair goes */
      memcpy(d, pos, (size_t)(k0 - pos));
      d += k0 - pos;
      n--;
    } else if (sl_codec_read_item(&q, end, &it) == 0 &&
               lkey_is(&wl->e[j].val, &it)) {
      continue; /* the same value: its bytes and type stay */
    } else {
      memcpy(d, pos, (size_t)(v0 - pos));
      d += v0 - pos;
      d += enc_lkey(&wl->e[j].val, d);
    }
    pos = p;
    wl->changed = 1;
  }
  memcpy(d, pos, (size_t)(end - pos));
  d += end - pos;
  for (j = 0; j < wl->n; j++) /* the keys added, in the order set */
    if (!(seen & (1u << j)) && wl->e[j].val.t != LUA_TNIL) {
      d += enc_lkey(&wl->e[j].key, d);
      d += enc_lkey(&wl->e[j].val, d);
      n++;
      wl->changed = 1;
    }
  *count = n;
  return d;
}

size_t sl_proxy_log_fill(void *box, uint8_t *dst) {
  struct box *b = box;
  struct wlog *wl = b->pwlog;
  const struct pnode *nd = b->proot;
  const uint8_t *base = b->ev->data + b->ev->payload_off;
  uint8_t hdr[5], *d;
  uint32_t count;
  size_t h, len;

  d = log_pairs(b, wl, dst + nd->body, &count);
  if (d == NULL) { /* the original, for the caller to throw away */
    wl->failed = 1;
    memcpy(dst, base, b->ev->payload_len);
    return b->ev->payload_len;
  }
  len = (size_t)(d - (dst + nd->body));
  if (count == nd->n) { /* the header as it came */
    memcpy(dst, base, nd->body);
    return nd->body + len;
  }
  if (nd->body == 1 && count < 16) { /* a fixmap stays one */
    dst[0] = (uint8_t)(0x80 | count);
    return 1 + len;
  }
  h = sl_codec_pack_maphdr(hdr, count);
  if (h != nd->body) /* rare: the count crossed a header size */
    memmove(dst + h, dst + nd->body, len);
  memcpy(dst, hdr, h);
  return h + len;
}

int sl_proxy_log_failed(const struct box *b) {
  return ((const struct wlog *)b->pwlog)->failed;
}

int sl_proxy_log_changed(const struct box *b) {
  return ((const struct wlog *)b->pwlog)->changed;
}
