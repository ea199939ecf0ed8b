/* pattern.c - Lua 5.1 patterns (reference manual §5.4.1) for rule states,
 * written so that a hostile pattern can be stopped: the matcher counts its
 * steps and calls the rule's check, and its recursion depth is bounded.
 * Owns nothing but the closures sl_pattern_install puts in a table. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, even when CFLAGS lacks it */
#endif
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "common.h"
#include "pattern.h"

#define ESC '%'
#define SPECIALS "^$*+?.([%-" /* a find pattern without them is plain */
#define CAP_UNFINISHED (-1)   /* '(' seen, ')' not yet */
#define CAP_POSITION (-2)     /* "()": captures a position, not a string */
#define PLAIN_WINDOW (256 << 10) /* subject bytes per memmem call */
#define PLAIN_LONG (1 << 20)     /* longer needles: found by a prefix */
#define PLAIN_PREFIX (64 << 10)  /* ... of this many bytes */
#define COPY_PER_STEP 8          /* bytes copied that cost one step */

/* The check callback, shared as upvalue 1 of every installed closure. */
struct hook {
  sl_pattern_check_cb check;
};

struct capture {
  const char *init;
  ptrdiff_t len; /* a length, CAP_UNFINISHED or CAP_POSITION */
};

/* One call of find, match or gsub, or one gmatch step. It lives on the C
 * stack, so an error raised anywhere below leaks nothing. */
struct matcher {
  lua_State *L;
  sl_pattern_check_cb check;
  const char *src_init; /* the whole subject: positions and %f look here */
  const char *src_end;
  const char *p_end;    /* the pattern stops at its first '\0' */
  ptrdiff_t budget;     /* steps left until the next check */
  int depth;            /* nested do_match calls */
  int level;            /* captures opened */
  struct capture capture[SL_PATTERN_MAX_CAPTURES];
};

static const char *do_match(struct matcher *m, const char *s, const char *p);

/* ---------------------------------------------------------------- steps */

static void matcher_init(struct matcher *m, lua_State *L, const char *s,
                         size_t ls, const char *p, size_t lp) {
  const struct hook *h = lua_touserdata(L, lua_upvalueindex(1));
  const char *nul = memchr(p, '\0', lp);

  m->L = L;
  m->check = h != NULL ? h->check : NULL;
  m->src_init = s;
  m->src_end = s + ls;
  m->p_end = nul != NULL ? nul : p + lp; /* as LuaJIT: '\0' ends a pattern */
  m->budget = SL_PATTERN_CHECK_STEPS;
  m->depth = 0;
  m->level = 0;
}

/* Spend n steps; each time SL_PATTERN_CHECK_STEPS are used up, ask check,
 * which may raise and never come back. */
static void spend(struct matcher *m, size_t n) {
  if (sl_likely((size_t)m->budget > n)) {
    m->budget -= (ptrdiff_t)n;
    return;
  }
  m->budget = SL_PATTERN_CHECK_STEPS;
  if (m->check != NULL)
    m->check(m->L);
}

/* ------------------------------------------------------ character classes */

/* Classes are ASCII only, as LuaJIT's: bytes >= 0x80 are in no class. */
static int in_class(unsigned char c, unsigned char cl) {
  int yes;

  switch (cl | 0x20) { /* only 'A' and 'a' become 'a', and so on */
  case 'a': yes = (unsigned char)((c | 0x20) - 'a') < 26; break;
  case 'c': yes = c < ' ' || c == 0x7f; break;
  case 'd': yes = (unsigned char)(c - '0') < 10; break;
  case 'g': yes = c > ' ' && c < 0x7f; break;
  case 'l': yes = (unsigned char)(c - 'a') < 26; break;
  case 'p':
    yes = c > ' ' && c < 0x7f && (unsigned char)(c - '0') >= 10 &&
          (unsigned char)((c | 0x20) - 'a') >= 26;
    break;
  case 's': yes = c == ' ' || (unsigned char)(c - '\t') < 5; break;
  case 'u': yes = (unsigned char)(c - 'A') < 26; break;
  case 'w':
    yes = (unsigned char)(c - '0') < 10 ||
          (unsigned char)((c | 0x20) - 'a') < 26;
    break;
  case 'x':
    yes = (unsigned char)(c - '0') < 10 ||
          (unsigned char)((c | 0x20) - 'a') < 6;
    break;
  case 'z': yes = c == '\0'; break;
  default: return cl == c; /* %. %% %] ...: the character itself */
  }
  return cl & 0x20 ? yes : !yes; /* upper case: the complement */
}

/* Is c in the set [...] that starts at p ('[') and ends at close (']')?
 * After '[' or "[^" the first byte is always a member, even ']'; "x-y" is
 * a range when y comes before close; "%x" is a class or an escaped byte. */
static int in_set(struct matcher *m, unsigned char c, const char *p,
                  const char *close) {
  int member = 1;

  spend(m, (size_t)(close - p));
  p++;
  if (*p == '^') {
    member = 0;
    p++;
  }
  while (p < close) {
    if (*p == ESC) {
      if (in_class(c, (unsigned char)p[1]))
        return member;
      p += 2;
    } else if (p[1] == '-' && p + 2 < close) {
      if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
        return member;
      p += 3;
    } else {
      if ((unsigned char)*p == c)
        return member;
      p++;
    }
  }
  return !member;
}

/* End of the single-character class at p (p < p_end): one byte, "%x" or
 * a set. Raises for a pattern that ends inside it. */
static const char *class_end(struct matcher *m, const char *p) {
  const char *start = p;

  switch (*p++) {
  case ESC:
    if (p == m->p_end)
      luaL_error(m->L, "malformed pattern (ends with '%%')");
    return p + 1;
  case '[':
    if (p < m->p_end && *p == '^')
      p++;
    for (;;) { /* a member, then look for the ']' that closes */
      if (p == m->p_end)
        luaL_error(m->L, "malformed pattern (missing ']')");
      if (*p++ == ESC && p < m->p_end)
        p++;
      if (p < m->p_end && *p == ']')
        break;
    }
    spend(m, (size_t)(p - start));
    return p + 1;
  default:
    return p;
  }
}

/* Does the byte at s match the class p..ep? s must be inside the subject. */
static int single_match(struct matcher *m, const char *s, const char *p,
                        const char *ep) {
  unsigned char c = (unsigned char)*s;

  spend(m, 1);
  switch (*p) {
  case '.':
    return 1;
  case ESC:
    return in_class(c, (unsigned char)p[1]);
  case '[':
    return in_set(m, c, p, ep - 1);
  default:
    return (unsigned char)*p == c;
  }
}

/* ------------------------------------------------------------- matching */

/* The longest run of the class first, then shorter ones (*, +). */
static const char *max_expand(struct matcher *m, const char *s,
                              const char *p, const char *ep) {
  ptrdiff_t i = 0;

  while (s + i < m->src_end && single_match(m, s + i, p, ep))
    i++;
  for (; i >= 0; i--) {
    const char *e = do_match(m, s + i, ep + 1);
    if (e != NULL)
      return e;
  }
  return NULL;
}

/* The shortest run of the class first, then longer ones (-). */
static const char *min_expand(struct matcher *m, const char *s,
                              const char *p, const char *ep) {
  for (;;) {
    const char *e = do_match(m, s, ep + 1);
    if (e != NULL)
      return e;
    if (s < m->src_end && single_match(m, s, p, ep))
      s++;
    else
      return NULL;
  }
}

static const char *open_capture(struct matcher *m, const char *s,
                                const char *p, ptrdiff_t what) {
  const char *e;

  if (m->level >= SL_PATTERN_MAX_CAPTURES)
    luaL_error(m->L, "too many captures");
  m->capture[m->level].init = s;
  m->capture[m->level].len = what;
  m->level++;
  e = do_match(m, s, p);
  if (e == NULL)
    m->level--; /* undo on backtrack */
  return e;
}

static const char *close_capture(struct matcher *m, const char *s,
                                 const char *p) {
  const char *e;
  int i;

  for (i = m->level - 1; i >= 0; i--)
    if (m->capture[i].len == CAP_UNFINISHED)
      break;
  if (i < 0)
    luaL_error(m->L, "invalid pattern capture");
  m->capture[i].len = s - m->capture[i].init;
  e = do_match(m, s, p);
  if (e == NULL)
    m->capture[i].len = CAP_UNFINISHED;
  return e;
}

/* %b: s must start with open; the match ends at the close that balances. */
static const char *match_balance(struct matcher *m, const char *s,
                                 const char *p) {
  unsigned char open, close;
  ptrdiff_t depth = 1;
  const char *q;

  if (p + 2 > m->p_end)
    luaL_error(m->L, "unbalanced pattern");
  open = (unsigned char)p[0];
  close = (unsigned char)p[1];
  if (s >= m->src_end || (unsigned char)*s != open)
    return NULL;
  for (q = s + 1; q < m->src_end; q++) {
    if ((unsigned char)*q == close) { /* tested first: %b'' works */
      if (--depth == 0) {
        spend(m, (size_t)(q - s));
        return q + 1;
      }
    } else if ((unsigned char)*q == open) {
      depth++;
    }
  }
  spend(m, (size_t)(q - s));
  return NULL;
}

/* %1-%9: the same bytes as a closed capture again. */
static const char *match_backref(struct matcher *m, const char *s, int c) {
  int i = c - '1';
  ptrdiff_t len;

  if (i < 0 || i >= m->level || m->capture[i].len == CAP_UNFINISHED)
    luaL_error(m->L, "invalid capture index");
  len = m->capture[i].len;
  if (len < 0 || m->src_end - s < len) /* a position never matches */
    return NULL;
  spend(m, (size_t)len);
  return memcmp(m->capture[i].init, s, (size_t)len) == 0 ? s + len : NULL;
}

/* Match pattern p against the subject at s. Returns the end of the match
 * or NULL. Simple items loop here; only what may have to backtrack goes one
 * call deeper. Malformed parts raise when the matcher reaches them, as
 * LuaJIT's do. */
static const char *match_here(struct matcher *m, const char *s,
                              const char *p) {
  for (;;) {
    const char *ep;
    int ok;

    spend(m, 1);
    if (p == m->p_end)
      return s;
    switch (*p) {
    case '(':
      if (p + 1 < m->p_end && p[1] == ')')
        return open_capture(m, s, p + 2, CAP_POSITION);
      return open_capture(m, s, p + 1, CAP_UNFINISHED);
    case ')':
      return close_capture(m, s, p + 1);
    case '$':
      if (p + 1 == m->p_end) /* '$' elsewhere is the byte '$' */
        return s == m->src_end ? s : NULL;
      break;
    case ESC:
      if (p + 1 == m->p_end)
        break; /* class_end raises */
      if (p[1] == 'b') {
        s = match_balance(m, s, p + 2);
        if (s == NULL)
          return NULL;
        p += 4;
        continue;
      }
      if (p[1] == 'f') {
        unsigned char prev, cur;
        p += 2;
        if (p == m->p_end || *p != '[')
          luaL_error(m->L, "missing '[' after '%%f' in pattern");
        ep = class_end(m, p);
        prev = s == m->src_init ? '\0' : (unsigned char)s[-1];
        cur = s < m->src_end ? (unsigned char)*s : '\0';
        if (in_set(m, prev, p, ep - 1) || !in_set(m, cur, p, ep - 1))
          return NULL;
        p = ep;
        continue;
      }
      if (p[1] >= '0' && p[1] <= '9') {
        s = match_backref(m, s, p[1]);
        if (s == NULL)
          return NULL;
        p += 2;
        continue;
      }
      break;
    }
    /* a single-character class, maybe with a quantifier */
    ep = class_end(m, p);
    ok = s < m->src_end && single_match(m, s, p, ep);
    if (ep < m->p_end) {
      switch (*ep) {
      case '?':
        if (ok) {
          const char *e = do_match(m, s + 1, ep + 1);
          if (e != NULL)
            return e;
        }
        p = ep + 1;
        continue;
      case '+':
        return ok ? max_expand(m, s + 1, p, ep) : NULL;
      case '*':
        return max_expand(m, s, p, ep);
      case '-':
        return min_expand(m, s, p, ep);
      }
    }
    if (!ok)
      return NULL;
    s++;
    p = ep;
  }
}

/* Every recursion passes here: the bound keeps the C stack small. */
static const char *do_match(struct matcher *m, const char *s, const char *p) {
  const char *e;

  if (m->depth >= SL_PATTERN_MAX_DEPTH)
    luaL_error(m->L, "pattern too complex");
  m->depth++;
  e = match_here(m, s, p);
  m->depth--;
  return e;
}

/* Try the pattern at subject offset `at`, with no captures open. */
static const char *match_at(struct matcher *m, ptrdiff_t at, const char *p) {
  m->level = 0;
  m->depth = 0;
  return do_match(m, m->src_init + at, p);
}

/* ------------------------------------------------------------- captures */

/* Push capture i of the match s..e. With no captures, %0 and %1 (i 0) are
 * the whole match. */
static void push_capture(struct matcher *m, int i, const char *s,
                         const char *e) {
  ptrdiff_t len;

  if (i >= m->level) {
    if (i != 0)
      luaL_error(m->L, "invalid capture index");
    lua_pushlstring(m->L, s, (size_t)(e - s));
    return;
  }
  len = m->capture[i].len;
  if (len == CAP_UNFINISHED)
    luaL_error(m->L, "unfinished capture");
  if (len == CAP_POSITION)
    lua_pushinteger(m->L, m->capture[i].init - m->src_init + 1);
  else
    lua_pushlstring(m->L, m->capture[i].init, (size_t)len);
}

/* Push all captures; with none, the whole match if whole is set. Returns
 * how many values were pushed. */
static int push_captures(struct matcher *m, const char *s, const char *e,
                         int whole) {
  int n = m->level == 0 && whole ? 1 : m->level;
  int i;

  luaL_checkstack(m->L, n, "too many captures");
  for (i = 0; i < n; i++)
    push_capture(m, i, s, e);
  return n;
}

/* ------------------------------------------------------------ functions */

/* The start offset from argument arg (1-based, negative from the end),
 * clamped to 0..len. LuaJIT converts it to a 32-bit int the way x86's
 * cvttsd2si does: truncation, and INT32_MIN for NaN and out of range. */
static ptrdiff_t start_offset(lua_State *L, int arg, size_t len) {
  lua_Number d = luaL_optnumber(L, arg, 1);
  ptrdiff_t pos = d >= -2147483648.0 && d < 2147483648.0 ? (int32_t)d
                                                         : INT32_MIN;

  if (pos < 0)
    pos += (ptrdiff_t)len + 1;
  pos--;
  if (pos < 0)
    return 0;
  return (size_t)pos > len ? (ptrdiff_t)len : pos;
}

static int has_specials(const char *p, size_t lp) {
  size_t i;

  for (i = 0; i < lp; i++)
    if (p[i] != '\0' && strchr(SPECIALS, p[i]) != NULL)
      return 1;
  return 0;
}

/* The first p[0..lp) in s[0..ls) (lp > 0), searched in windows with a
 * step charge each: memmem is linear, but one call over a long subject
 * ran 0.15 s (32 MB) unchecked. A window holds max(PLAIN_WINDOW, lp)
 * starting positions, so the search stays linear and one memmem call
 * reads at most 2 MiB. A needle over PLAIN_LONG is found by its first
 * PLAIN_PREFIX bytes and the rest compared at each hit, charged: linear
 * on ordinary text, but a periodic subject can make it run out of
 * budget where memmem would have run 9 ms per MiB of needle unchecked. */
static const char *find_plain(struct matcher *m, const char *s, size_t ls,
                              const char *p, size_t lp) {
  size_t pre = lp > PLAIN_LONG ? PLAIN_PREFIX : lp;
  size_t starts = pre > PLAIN_WINDOW ? pre : PLAIN_WINDOW;
  const char *at = s, *end = s + ls;

  while ((size_t)(end - at) >= lp) {
    size_t win = (size_t)(end - at);
    const char *hit;

    if (win > starts + pre - 1)
      win = starts + pre - 1;
    spend(m, win / COPY_PER_STEP + 1);
    hit = memmem(at, win, p, pre);
    if (hit == NULL) {
      at += win - pre + 1;
      continue;
    }
    if ((size_t)(end - hit) < lp)
      return NULL; /* no room left for the whole needle */
    if (lp == pre)
      return hit;
    spend(m, (lp - pre) / COPY_PER_STEP + 1);
    if (memcmp(hit + pre, p + pre, lp - pre) == 0)
      return hit;
    at = hit + 1;
  }
  return NULL;
}

/* find (find set) or match: the first match at or after init. */
static int find_or_match(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  ptrdiff_t init = start_offset(L, 3, ls);
  struct matcher m;
  int anchor;

  if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
    const char *hit;
    matcher_init(&m, L, s, ls, p, lp);
    hit = lp == 0 ? s + init
                  : find_plain(&m, s + init, ls - (size_t)init, p, lp);
    if (hit == NULL) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushinteger(L, hit - s + 1);
    lua_pushinteger(L, (hit - s) + (ptrdiff_t)lp);
    return 2;
  }
  matcher_init(&m, L, s, ls, p, lp);
  anchor = p < m.p_end && *p == '^';
  if (anchor)
    p++;
  for (;;) {
    const char *e = match_at(&m, init, p);
    if (e != NULL) {
      if (!find)
        return push_captures(&m, s + init, e, 1);
      lua_pushinteger(L, init + 1);
      lua_pushinteger(L, e - s);
      return push_captures(&m, NULL, NULL, 0) + 2;
    }
    if (anchor || (size_t)init == ls)
      break;
    init++;
  }
  lua_pushnil(L);
  return 1;
}

static int pattern_find(lua_State *L) {
  return find_or_match(L, 1);
}

static int pattern_match(lua_State *L) {
  return find_or_match(L, 0);
}

/* The gmatch iterator. Upvalues: hook, subject, pattern, next offset. In
 * gmatch '^' is an ordinary byte, as in LuaJIT. */
static int gmatch_next(lua_State *L) {
  size_t ls, lp;
  const char *s = lua_tolstring(L, lua_upvalueindex(2), &ls);
  const char *p = lua_tolstring(L, lua_upvalueindex(3), &lp);
  ptrdiff_t at = (ptrdiff_t)lua_tointeger(L, lua_upvalueindex(4));
  struct matcher m;

  matcher_init(&m, L, s, ls, p, lp);
  for (; (size_t)at <= ls; at++) {
    const char *e = match_at(&m, at, p);
    if (e != NULL) {
      ptrdiff_t next = e - s;
      if (e == s + at)
        next++; /* an empty match: move on, or it repeats forever */
      lua_pushinteger(L, next);
      lua_replace(L, lua_upvalueindex(4));
      return push_captures(&m, s + at, e, 1);
    }
  }
  return 0;
}

static int pattern_gmatch(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, gmatch_next, 4);
  return 1;
}

/* gsub's result. LuaJIT's luaL_Buffer keeps its pieces on the Lua stack
 * and joins them with lua_concat, each join copying up to the whole result
 * so far into fresh memory in one C step that no check reaches: a 16 KiB
 * subject whose every byte became 64 KiB ran 30-140 ms of CPU against a
 * 10 ms budget where fresh pages fault slowly (a VM under load: 15 us a
 * page). Here the bytes go to an array on the C stack, then to a userdata
 * at stack slot `slot` that doubles; every copy is in pieces of OUT_PIECE
 * bytes that spend steps, so the clock is asked every few hundred KiB.
 * The userdata is the state's memory (memory_mb counts it) and garbage
 * once the call ends or raises. */
#define OUT_INIT 1024        /* bytes on the C stack before a userdata */
#define OUT_PIECE (64 << 10) /* bytes copied between two spends */
#define OUT_MAX 0x7fffff00u  /* LuaJIT's longest string (LJ_MAX_STR) */

struct out {
  char *p; /* init, then the userdata at slot */
  size_t n, cap;
  int slot;
  char init[OUT_INIT];
};

static void out_init(struct out *o, int slot) {
  o->p = o->init;
  o->n = 0;
  o->cap = sizeof(o->init);
  o->slot = slot;
}

/* Copy k bytes in pieces that spend steps (and so meet the check). */
static void copy_spent(struct matcher *m, char *dst, const char *src,
                       size_t k) {
  while (k > 0) {
    size_t piece = k < OUT_PIECE ? k : OUT_PIECE;
    spend(m, piece / COPY_PER_STEP + 1);
    memcpy(dst, src, piece);
    dst += piece, src += piece, k -= piece;
  }
}

/* Room for k more bytes: a userdata of twice the size (or as much as
 * needed) takes the bytes so far and the place of the last one. */
static void out_reserve(struct matcher *m, struct out *o, size_t k) {
  size_t cap = o->cap;
  char *p;

  if (sl_likely(k <= o->cap - o->n))
    return;
  if (k > OUT_MAX - o->n)
    luaL_error(m->L, "string length overflow");
  while (cap - o->n < k)
    cap = cap > OUT_MAX / 2 ? OUT_MAX : cap * 2;
  p = lua_newuserdata(m->L, cap);
  copy_spent(m, p, o->p, o->n);
  lua_replace(m->L, o->slot); /* the last userdata becomes garbage */
  o->p = p;
  o->cap = cap;
}

static void out_add(struct matcher *m, struct out *o, const char *s,
                    size_t k) {
  out_reserve(m, o, k);
  copy_spent(m, o->p + o->n, s, k);
  o->n += k;
}

static void out_addchar(struct matcher *m, struct out *o, char c) {
  out_reserve(m, o, 1);
  o->p[o->n++] = c;
}

/* Add the string at the top of the stack and pop it. */
static void out_addtop(struct matcher *m, struct out *o) {
  size_t k;
  const char *v = lua_tolstring(m->L, -1, &k);
  out_add(m, o, v, k);
  lua_pop(m->L, 1);
}

/* Append the replacement string at index 3 for the match s..e: "%0"-"%9"
 * are captures, '%' before anything else stands for that byte (before the
 * end, for the '\0' that ends every Lua string). */
static void add_string(struct matcher *m, struct out *o, const char *s,
                       const char *e) {
  size_t len, i = 0;
  const char *r = lua_tolstring(m->L, 3, &len);

  while (i < len) {
    const char *esc = memchr(r + i, ESC, len - i);
    size_t n = esc != NULL ? (size_t)(esc - r) - i : len - i;
    char c;

    spend(m, 1);
    out_add(m, o, r + i, n); /* replacements may copy MBs: spent as copied */
    i += n;
    if (i == len)
      break;
    c = i + 1 < len ? r[i + 1] : '\0';
    i += 2;
    if (c < '0' || c > '9') {
      out_addchar(m, o, c);
    } else if (c == '0') {
      out_add(m, o, s, (size_t)(e - s));
    } else {
      push_capture(m, c - '1', s, e);
      out_addtop(m, o);
    }
  }
}

/* Append the replacement for the match s..e as the value at index 3 asks:
 * string, table lookup or function call on the first capture; false or
 * nil from the table or function keeps the match. */
static void add_value(struct matcher *m, struct out *o, const char *s,
                      const char *e, int type) {
  lua_State *L = m->L;

  if (type == LUA_TSTRING || type == LUA_TNUMBER) {
    add_string(m, o, s, e);
    return;
  }
  if (type == LUA_TFUNCTION) {
    int n;
    lua_pushvalue(L, 3);
    n = push_captures(m, s, e, 1);
    lua_call(L, n, 1);
  } else {
    push_capture(m, 0, s, e);
    lua_gettable(L, 3);
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_pushlstring(L, s, (size_t)(e - s));
  } else if (!lua_isstring(L, -1)) {
    luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  }
  out_addtop(m, o);
}

static int pattern_gsub(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  int type = lua_type(L, 3);
  /* LuaJIT takes n through a C int; so do we, wrapping alike */
  int max = (int)luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  struct matcher m;
  struct out o;
  ptrdiff_t at = 0;
  int anchor, n = 0;

  luaL_argcheck(L,
                type == LUA_TNUMBER || type == LUA_TSTRING ||
                    type == LUA_TFUNCTION || type == LUA_TTABLE,
                3, "string/function/table expected");
  lua_settop(L, 4);
  lua_pushnil(L); /* 5: the result's userdata, once it has one */
  out_init(&o, 5);
  matcher_init(&m, L, s, ls, p, lp);
  anchor = p < m.p_end && *p == '^';
  if (anchor)
    p++;
  while (n < max) {
    const char *e = match_at(&m, at, p);
    if (e != NULL) {
      n++;
      add_value(&m, &o, s + at, e, type);
    }
    if (e != NULL && e > s + at) {
      at = e - s;
    } else if ((size_t)at < ls) {
      out_addchar(&m, &o, s[at]); /* no match, or empty: keep one byte */
      at++;
    } else {
      break;
    }
    if (anchor)
      break;
  }
  out_add(&m, &o, s + at, ls - (size_t)at);
  lua_pushlstring(L, o.p, o.n);
  lua_pushinteger(L, n);
  return 2;
}

/* --------------------------------------------------------------- install */

void sl_pattern_install(lua_State *L, int idx, sl_pattern_check_cb check) {
  static const luaL_Reg fns[] = {
      {"find", pattern_find},
      {"match", pattern_match},
      {"gmatch", pattern_gmatch},
      {"gsub", pattern_gsub},
  };
  struct hook *h;
  size_t i;

  if (idx < 0 && idx > LUA_REGISTRYINDEX)
    idx = lua_gettop(L) + idx + 1;
  h = lua_newuserdata(L, sizeof *h);
  h->check = check;
  for (i = 0; i < SL_ARRAY_SIZE(fns); i++) {
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, fns[i].func, 1);
    lua_setfield(L, idx, fns[i].name);
  }
  lua_pop(L, 1);
}
