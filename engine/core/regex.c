/* regex.c - a pattern is parsed into a small tree, then emitted as a
 * Thompson NFA program (counted repeats are unrolled, so the program size
 * is capped), which the search simulates one code point at a time with a
 * set of live states: no backtracking, so time is linear in the text.
 * When it fits its caps, a DFA is also built from the program at compile
 * time (see "compile-time DFA" below) and the search runs that instead. */
#include "regex.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "utf8.h"

#define MAX_PATTERN 8192 /* bytes of pattern text */
#define MAX_NEST 64      /* nested groups */

enum { O_CHAR, O_ANY, O_CLASS, O_SPLIT, O_JMP, O_BOL, O_EOL, O_MATCH };

struct insn {
  uint8_t op, neg;
  uint16_t x, y; /* SPLIT/JMP targets; CLASS: first range, range count */
  uint32_t c;    /* CHAR: the code point */
};

struct dfa;

struct sl_regex {
  struct insn *prog;
  uint32_t n;
  uint32_t *ranges; /* [lo, hi] pairs */
  struct dfa *dfa;  /* NULL: the NFA runs (see dfa_build) */
};

static struct dfa *dfa_build(const struct sl_regex *re);
static void dfa_free(struct dfa *d);

/* ---- parsing ---------------------------------------------------------- */

enum { A_EMPTY, A_CHAR, A_ANY, A_CLASS, A_BOL, A_EOL, A_CAT, A_ALT, A_REP };

struct ast {
  uint8_t kind, neg;
  int32_t kid, next; /* first child, next sibling */
  uint32_t c;        /* CHAR; CLASS: first range */
  uint32_t nr;       /* CLASS: range count */
  int32_t min, max;  /* REP; max -1: unbounded */
};

struct rp {
  const char *p, *s, *e; /* cursor, start, end */
  struct ast *a;
  int32_t na, capa;
  uint32_t *r; /* ranges being built */
  uint32_t nr, capr;
  struct insn *prog;
  uint32_t n;
  char *err;
  size_t errlen;
  int depth;
};

static int rfail(struct rp *r, const char *fmt, ...) SL_PRINTF(2, 3);
static int rfail(struct rp *r, const char *fmt, ...) {
  va_list ap;
  int n = snprintf(r->err, r->errlen, "at offset %d: ", (int)(r->p - r->s));
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < r->errlen)
    vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return SL_EINVAL;
}

static int32_t node(struct rp *r, int kind) {
  struct ast *a;
  if (r->na == r->capa)
    return rfail(r, "pattern too complex"), -1; /* sized to never happen */
  a = &r->a[r->na];
  memset(a, 0, sizeof(*a));
  a->kind = (uint8_t)kind;
  a->kid = a->next = -1;
  return r->na++;
}

static int add_range(struct rp *r, uint32_t lo, uint32_t hi) {
  if (r->nr + 2 > r->capr) {
    uint32_t cap = r->capr ? r->capr * 2 : 32;
    uint32_t *n = realloc(r->r, cap * sizeof(*n));
    if (n == NULL)
      return SL_ENOMEM;
    r->r = n;
    r->capr = cap;
  }
  r->r[r->nr++] = lo;
  r->r[r->nr++] = hi;
  return 0;
}

static const uint32_t digit_r[] = {'0', '9'};
static const uint32_t word_r[] = {'0', '9', 'A', 'Z', '_', '_', 'a', 'z'};
static const uint32_t space_r[] = {
    0x09, 0x0d, 0x20, 0x20, 0xa0, 0xa0, 0x1680, 0x1680, 0x2000, 0x200a,
    0x2028, 0x2029, 0x202f, 0x202f, 0x205f, 0x205f, 0x3000, 0x3000,
    0xfeff, 0xfeff};

/* Add the ranges of \d \w \s, or of their complements (neg). */
static int add_set(struct rp *r, char which, int neg) {
  const uint32_t *t = which == 'd' ? digit_r : which == 'w' ? word_r : space_r;
  size_t n = which == 'd' ? 2 : which == 'w' ? 8 : 20, i;
  uint32_t lo = 0;
  int rc = 0;
  for (i = 0; i < n && rc == 0; i += 2) {
    if (!neg)
      rc = add_range(r, t[i], t[i + 1]);
    else if (t[i] > lo)
      rc = add_range(r, lo, t[i] - 1);
    lo = t[i + 1] + 1;
  }
  if (rc == 0 && neg)
    rc = add_range(r, lo, 0x10ffff);
  return rc;
}

static int hex(struct rp *r, int digits, uint32_t *out) {
  int i, v;
  *out = 0;
  for (i = 0; i < digits; i++) {
    char c = r->p < r->e ? *r->p : 0;
    v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (v < 0)
      return rfail(r, "\\%c needs %d hex digits", digits == 2 ? 'x' : 'u',
                   digits);
    *out = *out * 16 + (uint32_t)v;
    r->p++;
  }
  return 0;
}

/* One code point of the pattern text (UTF-8). */
static uint32_t next_cp(struct rp *r) {
  const uint8_t *s = (const uint8_t *)r->p;
  size_t len = sl_utf8_seq(s, (size_t)(r->e - r->p), NULL);
  uint32_t c;
  if (len <= 1) {
    r->p++;
    return len == 1 ? s[0] : 0xfffd;
  }
  c = s[0] & (0xff >> (len + 1));
  for (size_t i = 1; i < len; i++)
    c = (c << 6) | (s[i] & 0x3f);
  r->p += len;
  return c;
}

/* After a backslash. Sets *cp to a code point, or *set to d/w/s/D/W/S for
 * a class escape. in_class: \b is a backspace there. */
static int escape(struct rp *r, uint32_t *cp, char *set, int in_class) {
  char c;
  *set = 0;
  if (r->p == r->e)
    return rfail(r, "pattern ends with a backslash");
  c = *r->p++;
  switch (c) {
  case 'd': case 'w': case 's': case 'D': case 'W': case 'S':
    *set = c;
    return 0;
  case 't': *cp = '\t'; return 0;
  case 'n': *cp = '\n'; return 0;
  case 'r': *cp = '\r'; return 0;
  case 'f': *cp = '\f'; return 0;
  case 'v': *cp = '\v'; return 0;
  case 'x': return hex(r, 2, cp);
  case 'u':
    if (r->p < r->e && *r->p == '{')
      return rfail(r, "\\u{...} is not supported (use \\uHHHH)");
    return hex(r, 4, cp);
  case '0':
    if (r->p < r->e && *r->p >= '0' && *r->p <= '9')
      return rfail(r, "octal escapes are not supported");
    *cp = 0;
    return 0;
  case 'b':
    if (in_class) {
      *cp = '\b';
      return 0;
    }
    return rfail(r, "word boundary \\b is not supported");
  case 'B': return rfail(r, "word boundary \\B is not supported");
  case 'k': return rfail(r, "named backreference \\k is not supported");
  case 'p': case 'P':
    return rfail(r, "Unicode property escape \\%c is not supported", c);
  case 'c': return rfail(r, "control escape \\c is not supported");
  default:
    break;
  }
  if (c >= '1' && c <= '9')
    return rfail(r, "backreference \\%c is not supported", c);
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
      (c >= '0' && c <= '9'))
    return rfail(r, "unknown escape \\%c", c);
  r->p--;
  *cp = next_cp(r); /* escaped punctuation stands for itself */
  return 0;
}

static int32_t parse_class(struct rp *r) {
  int32_t id = node(r, A_CLASS);
  uint32_t r0 = r->nr, lo, hi;
  char set;
  if (id < 0)
    return -1;
  r->a[id].c = r0;
  if (r->p < r->e && *r->p == '^') {
    r->a[id].neg = 1;
    r->p++;
  }
  if (r->p < r->e && *r->p == ']')
    return rfail(r, "empty class [] is not supported"), -1;
  for (;;) {
    if (r->p == r->e)
      return rfail(r, "class [ is not closed"), -1;
    if (*r->p == ']') {
      r->p++;
      break;
    }
    if (*r->p == '\\') {
      r->p++;
      if (escape(r, &lo, &set, 1) != 0)
        return -1;
      if (set) {
        if (add_set(r, (char)(set | 0x20), set < 'a') != 0)
          return rfail(r, "out of memory"), -1;
        continue;
      }
    } else {
      lo = next_cp(r);
    }
    hi = lo;
    if (r->p + 1 < r->e && *r->p == '-' && r->p[1] != ']') {
      r->p++;
      if (*r->p == '\\') {
        r->p++;
        if (escape(r, &hi, &set, 1) != 0)
          return -1;
        if (set)
          return rfail(r, "a class escape cannot end a range"), -1;
      } else {
        hi = next_cp(r);
      }
      if (hi < lo)
        return rfail(r, "range out of order in class"), -1;
    }
    if (add_range(r, lo, hi) != 0)
      return rfail(r, "out of memory"), -1;
  }
  r->a[id].nr = (r->nr - r0) / 2;
  return id;
}

static int32_t parse_alt(struct rp *r);

static int32_t parse_group(struct rp *r) {
  int32_t id;
  if (r->p < r->e && *r->p == '?') {
    const char *q = r->p + 1;
    if (q < r->e && *q == ':') {
      r->p += 2;
    } else if (q < r->e && (*q == '=' || *q == '!')) {
      return rfail(r, "lookahead (?%c is not supported", *q), -1;
    } else if (q + 1 < r->e && *q == '<' && (q[1] == '=' || q[1] == '!')) {
      return rfail(r, "lookbehind (?<%c is not supported", q[1]), -1;
    } else if (q < r->e && *q == '<') {
      return rfail(r, "named groups (?<name> are not supported"), -1;
    } else {
      return rfail(r, "group modifier (? is not supported"), -1;
    }
  }
  if (++r->depth > MAX_NEST)
    return rfail(r, "groups nested deeper than %d", MAX_NEST), -1;
  id = parse_alt(r);
  if (id < 0)
    return -1;
  if (r->p == r->e || *r->p != ')')
    return rfail(r, "group ( is not closed"), -1;
  r->p++;
  r->depth--;
  return id;
}

static int32_t parse_atom(struct rp *r) {
  char c = *r->p, set;
  uint32_t cp;
  int32_t id;
  switch (c) {
  case '(':
    r->p++;
    return parse_group(r);
  case '[':
    r->p++;
    return parse_class(r);
  case '.':
    r->p++;
    return node(r, A_ANY);
  case '^':
    r->p++;
    return node(r, A_BOL);
  case '$':
    r->p++;
    return node(r, A_EOL);
  case '*': case '+': case '?': case '{':
    return rfail(r, "nothing to repeat before %c", c), -1;
  case '\\':
    r->p++;
    if (escape(r, &cp, &set, 0) != 0)
      return -1;
    if (set) {
      id = node(r, A_CLASS);
      if (id < 0)
        return -1;
      r->a[id].c = r->nr;
      if (add_set(r, (char)(set | 0x20), set < 'a') != 0)
        return rfail(r, "out of memory"), -1;
      r->a[id].nr = (r->nr - r->a[id].c) / 2;
      return id;
    }
    break;
  default:
    cp = next_cp(r);
    break;
  }
  id = node(r, A_CHAR);
  if (id >= 0)
    r->a[id].c = cp;
  return id;
}

static int read_int(struct rp *r, int32_t *v) {
  const char *q = r->p;
  *v = 0;
  while (r->p < r->e && *r->p >= '0' && *r->p <= '9' && *v <= 100000)
    *v = *v * 10 + (*r->p++ - '0');
  return r->p > q ? 0 : -1;
}

/* A quantifier after an atom, if any: wraps it in A_REP. */
static int32_t parse_quant(struct rp *r, int32_t atom) {
  int32_t min, max, id;
  char c;
  if (r->p == r->e)
    return atom;
  c = *r->p;
  if (c == '*' || c == '+' || c == '?') {
    r->p++;
    min = c == '+';
    max = c == '?' ? 1 : -1;
  } else if (c == '{') {
    r->p++;
    if (read_int(r, &min) != 0)
      return rfail(r, "{ must start a quantifier {m}, {m,} or {m,n}"), -1;
    max = min;
    if (r->p < r->e && *r->p == ',') {
      r->p++;
      max = -1;
      if (r->p < r->e && *r->p != '}' && read_int(r, &max) != 0)
        return rfail(r, "bad quantifier"), -1;
    }
    if (r->p == r->e || *r->p != '}')
      return rfail(r, "quantifier { is not closed"), -1;
    r->p++;
    if ((max >= 0 && max < min))
      return rfail(r, "quantifier {%d,%d} is out of order", min, max), -1;
    if (min > SL_REGEX_MAX_REPEAT || max > SL_REGEX_MAX_REPEAT)
      return rfail(r, "repeat count over %d", SL_REGEX_MAX_REPEAT), -1;
  } else {
    return atom;
  }
  if (r->a[atom].kind == A_BOL || r->a[atom].kind == A_EOL)
    return rfail(r, "nothing to repeat before %c", c), -1;
  if (r->p < r->e && *r->p == '?')
    r->p++; /* lazy: the same texts match */
  if (r->p < r->e && (*r->p == '*' || *r->p == '+' || *r->p == '{'))
    return rfail(r, "nothing to repeat before %c", *r->p), -1;
  id = node(r, A_REP);
  if (id < 0)
    return -1;
  r->a[id].kid = atom;
  r->a[id].min = min;
  r->a[id].max = max;
  return id;
}

static int32_t parse_cat(struct rp *r) {
  int32_t id = node(r, A_CAT), last = -1, a;
  if (id < 0)
    return -1;
  while (r->p < r->e && *r->p != '|' && *r->p != ')') {
    a = parse_atom(r);
    if (a < 0)
      return -1;
    a = parse_quant(r, a);
    if (a < 0)
      return -1;
    if (last < 0)
      r->a[id].kid = a;
    else
      r->a[last].next = a;
    last = a;
  }
  return id;
}

static int32_t parse_alt(struct rp *r) {
  int32_t first = parse_cat(r), id, last;
  if (first < 0 || r->p == r->e || *r->p != '|')
    return first;
  id = node(r, A_ALT);
  if (id < 0)
    return -1;
  r->a[id].kid = last = first;
  while (r->p < r->e && *r->p == '|') {
    r->p++;
    last = r->a[last].next = parse_cat(r);
    if (last < 0)
      return -1;
  }
  return id;
}

/* ---- code generation -------------------------------------------------- */

static int emit(struct rp *r, int op, uint32_t x, uint32_t y, uint32_t c) {
  if (r->n >= SL_REGEX_MAX_INSNS)
    return -1;
  r->prog[r->n].op = (uint8_t)op;
  r->prog[r->n].neg = 0;
  r->prog[r->n].x = (uint16_t)x;
  r->prog[r->n].y = (uint16_t)y;
  r->prog[r->n].c = c;
  return (int)r->n++;
}

static int gen(struct rp *r, int32_t id);

static int gen_rep(struct rp *r, const struct ast *a) {
  int32_t i, at, chain = -1;
  for (i = 0; i < a->min; i++)
    if (gen(r, a->kid) != 0)
      return -1;
  if (a->max < 0) {
    at = emit(r, O_SPLIT, 0, 0, 0);
    if (at < 0)
      return -1;
    r->prog[at].x = (uint16_t)(at + 1);
    if (gen(r, a->kid) != 0 || emit(r, O_JMP, (uint32_t)at, 0, 0) < 0)
      return -1;
    r->prog[at].y = (uint16_t)r->n;
    return 0;
  }
  for (i = a->min; i < a->max; i++) { /* each optional copy may skip to the end */
    at = emit(r, O_SPLIT, r->n + 1, chain < 0 ? 0xffff : (uint32_t)chain, 0);
    if (at < 0 || gen(r, a->kid) != 0)
      return -1;
    chain = at;
  }
  while (chain >= 0) {
    int prev = r->prog[chain].y == 0xffff ? -1 : r->prog[chain].y;
    r->prog[chain].y = (uint16_t)r->n;
    chain = prev;
  }
  return 0;
}

static int gen_alt(struct rp *r, const struct ast *a) {
  int32_t k;
  int split, jmp = -1, at;
  for (k = a->kid; k >= 0; k = r->a[k].next) {
    if (r->a[k].next >= 0) {
      split = emit(r, O_SPLIT, r->n + 1, 0, 0);
      if (split < 0 || gen(r, k) != 0)
        return -1;
      at = emit(r, O_JMP, 0, 0, 0); /* chained to the end below */
      if (at < 0)
        return -1;
      r->prog[at].x = (uint16_t)(jmp < 0 ? 0xffff : jmp);
      jmp = at;
      r->prog[split].y = (uint16_t)r->n;
    } else if (gen(r, k) != 0) {
      return -1;
    }
  }
  while (jmp >= 0) {
    int prev = r->prog[jmp].x == 0xffff ? -1 : r->prog[jmp].x;
    r->prog[jmp].x = (uint16_t)r->n;
    jmp = prev;
  }
  return 0;
}

static int gen(struct rp *r, int32_t id) {
  const struct ast *a = &r->a[id];
  int32_t k;
  int at;
  switch (a->kind) {
  case A_CHAR: return emit(r, O_CHAR, 0, 0, a->c) < 0 ? -1 : 0;
  case A_ANY: return emit(r, O_ANY, 0, 0, 0) < 0 ? -1 : 0;
  case A_BOL: return emit(r, O_BOL, 0, 0, 0) < 0 ? -1 : 0;
  case A_EOL: return emit(r, O_EOL, 0, 0, 0) < 0 ? -1 : 0;
  case A_CLASS:
    at = emit(r, O_CLASS, a->c / 2, a->nr, 0);
    if (at < 0)
      return -1;
    r->prog[at].neg = a->neg;
    return 0;
  case A_CAT:
    for (k = a->kid; k >= 0; k = r->a[k].next)
      if (gen(r, k) != 0)
        return -1;
    return 0;
  case A_ALT: return gen_alt(r, a);
  case A_REP: return gen_rep(r, a);
  default: return 0;
  }
}

int sl_regex_compile(const char *pat, size_t n, struct sl_regex **out,
                     char *err, size_t errlen) {
  struct rp r;
  struct sl_regex *re = NULL;
  int32_t root;
  int rc = SL_ENOMEM;
  *out = NULL;
  memset(&r, 0, sizeof(r));
  r.p = r.s = pat;
  r.e = pat + n;
  r.err = err;
  r.errlen = errlen;
  if (n > MAX_PATTERN) {
    snprintf(err, errlen, "pattern longer than %d bytes", MAX_PATTERN);
    return SL_EINVAL;
  }
  r.capa = (int32_t)(2 * n + 4);
  r.a = malloc((size_t)r.capa * sizeof(*r.a));
  r.prog = malloc(SL_REGEX_MAX_INSNS * sizeof(*r.prog));
  re = calloc(1, sizeof(*re));
  if (r.a == NULL || r.prog == NULL || re == NULL)
    goto fail_mem;
  root = parse_alt(&r);
  if (root >= 0 && r.p != r.e) {
    rfail(&r, "unmatched )");
    root = -1;
  }
  if (root < 0) {
    rc = r.err[0] && strstr(r.err, "out of memory") ? SL_ENOMEM : SL_EINVAL;
    goto fail_mem;
  }
  if (gen(&r, root) != 0 || emit(&r, O_MATCH, 0, 0, 0) < 0) {
    snprintf(err, errlen, "pattern compiles to more than %d instructions",
             SL_REGEX_MAX_INSNS);
    rc = SL_EINVAL;
    goto fail_mem;
  }
  re->prog = r.prog;
  re->n = r.n;
  re->ranges = r.r;
  re->dfa = dfa_build(re); /* NULL (over its caps, or no memory): NFA */
  free(r.a);
  *out = re;
  return 0;
fail_mem:
  if (rc == SL_ENOMEM)
    snprintf(err, errlen, "out of memory");
  free(r.a);
  free(r.prog);
  free(r.r);
  free(re);
  return rc;
}

void sl_regex_free(struct sl_regex *re) {
  if (re == NULL)
    return;
  dfa_free(re->dfa);
  free(re->prog);
  free(re->ranges);
  free(re);
}

/* ---- search ----------------------------------------------------------- */

struct live {
  uint16_t pcs[2][SL_REGEX_MAX_INSNS];
  uint32_t cnt[2];
  uint16_t stack[SL_REGEX_MAX_INSNS];
  uint64_t mark[SL_REGEX_MAX_INSNS / 64];
};

/* Follow the empty moves from pc at text position pos (of n), adding the
 * states that read a code point to list l. Returns 1 on reaching MATCH. */
static int add(const struct sl_regex *re, struct live *lv, int l, uint32_t pc,
               size_t pos, size_t n) {
  uint32_t sp = 0;
#define PUSH(t)                                                      \
  do {                                                               \
    uint32_t t_ = (t);                                               \
    if (!(lv->mark[t_ >> 6] & ((uint64_t)1 << (t_ & 63)))) {         \
      lv->mark[t_ >> 6] |= (uint64_t)1 << (t_ & 63);                 \
      lv->stack[sp++] = (uint16_t)t_;                                \
    }                                                                \
  } while (0)
  PUSH(pc);
  while (sp > 0) {
    const struct insn *in = &re->prog[lv->stack[--sp]];
    switch (in->op) {
    case O_JMP: PUSH(in->x); break;
    case O_SPLIT: PUSH(in->y); PUSH(in->x); break;
    case O_BOL: if (pos == 0) PUSH((uint32_t)(in - re->prog) + 1); break;
    case O_EOL: if (pos == n) PUSH((uint32_t)(in - re->prog) + 1); break;
    case O_MATCH: return 1;
    default: lv->pcs[l][lv->cnt[l]++] = (uint16_t)(in - re->prog); break;
    }
  }
#undef PUSH
  return 0;
}

static int step_ok(const struct sl_regex *re, const struct insn *in,
                   uint32_t cp) {
  const uint32_t *rg;
  uint32_t i;
  int in_set = 0;
  switch (in->op) {
  case O_CHAR: return in->c == cp;
  case O_ANY: return cp != '\n' && cp != '\r' && cp != 0x2028 && cp != 0x2029;
  default:
    rg = re->ranges + 2 * (uint32_t)in->x;
    for (i = 0; i < in->y && !in_set; i++)
      in_set = cp >= rg[2 * i] && cp <= rg[2 * i + 1];
    return in_set != in->neg;
  }
}

int sl_regex_search_nfa(const struct sl_regex *re, const uint8_t *s,
                        size_t n) {
  struct live lv;
  size_t pos = 0, len;
  uint32_t cp, i;
  int cur = 0;
  lv.cnt[0] = 0;
  memset(lv.mark, 0, sizeof(lv.mark));
  if (add(re, &lv, cur, 0, 0, n))
    return 1;
  while (pos < n) {
    if (s[pos] < 0x80) {
      cp = s[pos];
      len = 1;
    } else {
      len = sl_utf8_seq(s + pos, n - pos, NULL);
      if (len == 0) {
        cp = 0xfffd;
        len = 1;
      } else {
        cp = s[pos] & (0xff >> (len + 1));
        for (i = 1; i < len; i++)
          cp = (cp << 6) | (s[pos + i] & 0x3f);
      }
    }
    pos += len;
    lv.cnt[!cur] = 0;
    memset(lv.mark, 0, sizeof(lv.mark));
    for (i = 0; i < lv.cnt[cur]; i++) {
      const struct insn *in = &re->prog[lv.pcs[cur][i]];
      if (step_ok(re, in, cp) &&
          add(re, &lv, !cur, lv.pcs[cur][i] + 1u, pos, n))
        return 1;
    }
    if (add(re, &lv, !cur, 0, pos, n)) /* unanchored: start again here */
      return 1;
    cur = !cur;
  }
  return 0;
}

/* ---- compile-time DFA -------------------------------------------------- */
/* Subset construction over the NFA above, made once at compile time so a
 * search costs a table lookup per code point. Code points are split into
 * classes at every boundary of a CHAR, CLASS or ANY in the program (each
 * instruction accepts all of a class or none of it). A DFA state is the set
 * of NFA instructions live after the empty moves: the ones that read a code
 * point, plus the $ that wait for the end of the text. ^ holds only in the
 * start state; every later state includes the restart at NFA pc 0 (the
 * search is unanchored). Reaching MATCH ends the search, so all accepting
 * states are one absorbing state; so are the states with nothing live. Over
 * any cap the regex keeps the NFA alone. */

#define DFA_MAX_STATES 256
#define DFA_MAX_CELLS 32768   /* states x classes, uint16 each: 64 KiB */
#define DFA_MAX_CLASSES 254   /* plus the column of bytes >= 0x80 */
#define DFA_BUDGET (1u << 24) /* build work (bitset words, pops) */
#define DFA_ACC 0             /* state ids (see dfa_row) */
#define DFA_DEAD 1
#define DFA_FIRST 2

struct dfa {
  uint8_t asc[256];  /* byte -> class; ncls (the wide column) for >= 0x80 */
  uint32_t ncls, stride; /* stride: ncls + 1 */
  uint32_t base;     /* over every state id: rows start here */
  uint32_t *lo;      /* class i holds the code points [lo[i], lo[i + 1]) */
  uint16_t *next;    /* [row + class]: the row of the next state */
  uint8_t *at_end;   /* per state: matches when the text ends there */
  uint32_t start;    /* row of the start state */
  uint8_t empty;     /* the empty text matches */
};

struct dbuild {
  const struct sl_regex *re;
  struct dfa *d;
  uint32_t words, nst, max;
  uint64_t *seen, *tmp, *junk, *sets, *hash, work;
  uint16_t *stack;
};

static void dfa_free(struct dfa *d) {
  if (d == NULL)
    return;
  free(d->lo);
  free(d->next);
  free(d->at_end);
  free(d);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static uint32_t class_of(const struct dfa *d, uint32_t cp) {
  uint32_t a = 0, z = d->ncls, m; /* lo[a] <= cp; the class is in [a, z) */
  while (z - a > 1) {
    m = (a + z) / 2;
    if (d->lo[m] <= cp)
      a = m;
    else
      z = m;
  }
  return a;
}

/* The classes: the sorted, distinct boundaries of every code-point test. */
static int dfa_classes(const struct sl_regex *re, struct dfa *d) {
  static const uint32_t any_b[] = {'\n', '\n' + 1, '\r', '\r' + 1, 0x2028,
                                   0x202a};
  uint32_t i, k, nb = 1, cap = 1, *b;
  for (i = 0; i < re->n; i++)
    cap += re->prog[i].op == O_CHAR ? 2 : re->prog[i].op == O_ANY ? 6
           : re->prog[i].op == O_CLASS ? 2u * re->prog[i].y : 0;
  b = malloc(cap * sizeof(*b));
  if (b == NULL)
    return -1;
  b[0] = 0;
  for (i = 0; i < re->n; i++) {
    const struct insn *in = &re->prog[i];
    if (in->op == O_CHAR) {
      b[nb++] = in->c;
      b[nb++] = in->c + 1;
    } else if (in->op == O_ANY) {
      for (k = 0; k < 6; k++)
        b[nb++] = any_b[k];
    } else if (in->op == O_CLASS) {
      const uint32_t *rg = re->ranges + 2 * (uint32_t)in->x;
      for (k = 0; k < in->y; k++) {
        b[nb++] = rg[2 * k];
        b[nb++] = rg[2 * k + 1] + 1;
      }
    }
  }
  qsort(b, nb, sizeof(*b), cmp_u32);
  for (i = k = 1; i < nb; i++)
    if (b[i] != b[k - 1])
      b[k++] = b[i];
  d->lo = b;
  d->ncls = k;
  if (k > DFA_MAX_CLASSES)
    return -1;
  d->stride = k + 1;
  for (i = 0; i < 256; i++)
    d->asc[i] = (uint8_t)(i < 0x80 ? class_of(d, i) : k);
  return 0;
}

/* Add to out the instructions reachable from pc by empty moves (^ holds
 * when bol, $ when eol; a $ that does not hold is kept in out). Returns 1
 * on reaching MATCH. The seen set is the caller's. */
static int dfa_closure(struct dbuild *b, uint32_t pc, int bol, int eol,
                       uint64_t *out) {
  const struct insn *prog = b->re->prog;
  uint32_t sp = 0, i;
#define DPUSH(t)                                                       \
  do {                                                                 \
    uint32_t t_ = (t);                                                 \
    if (!(b->seen[t_ >> 6] & ((uint64_t)1 << (t_ & 63)))) {            \
      b->seen[t_ >> 6] |= (uint64_t)1 << (t_ & 63);                    \
      b->stack[sp++] = (uint16_t)t_;                                   \
    }                                                                  \
  } while (0)
  DPUSH(pc);
  while (sp > 0) {
    i = b->stack[--sp];
    b->work++;
    switch (prog[i].op) {
    case O_JMP: DPUSH(prog[i].x); break;
    case O_SPLIT: DPUSH(prog[i].y); DPUSH(prog[i].x); break;
    case O_BOL: if (bol) DPUSH(i + 1); break;
    case O_EOL:
      if (eol)
        DPUSH(i + 1);
      else
        out[i >> 6] |= (uint64_t)1 << (i & 63);
      break;
    case O_MATCH: return 1;
    default: out[i >> 6] |= (uint64_t)1 << (i & 63); break;
    }
  }
#undef DPUSH
  return 0;
}

static void dfa_clear(struct dbuild *b, uint64_t *set) {
  memset(set, 0, b->words * sizeof(*set));
  b->work += b->words;
}

/* The state id of the set in b->tmp (m: MATCH was reached), adding it if
 * new. -1 over the state cap. */
static int dfa_intern(struct dbuild *b, int m) {
  uint64_t h = 1469598103934665603u, any = 0;
  uint32_t i;
  if (m)
    return DFA_ACC;
  for (i = 0; i < b->words; i++) {
    any |= b->tmp[i];
    h = (h ^ b->tmp[i]) * 1099511628211u;
  }
  if (any == 0)
    return DFA_DEAD;
  b->work += b->words + b->nst;
  for (i = DFA_FIRST; i < b->nst; i++)
    if (b->hash[i] == h &&
        memcmp(b->sets + (size_t)i * b->words, b->tmp, b->words * 8) == 0)
      return (int)i;
  if (b->nst == b->max)
    return -1;
  memcpy(b->sets + (size_t)b->nst * b->words, b->tmp, b->words * 8);
  b->hash[b->nst] = h;
  return (int)b->nst++;
}

/* The state after reading a code point of class c in state st. */
static int dfa_step(struct dbuild *b, uint32_t st, uint32_t c) {
  const uint64_t *set = b->sets + (size_t)st * b->words;
  uint32_t w, pc;
  int m;
  dfa_clear(b, b->seen);
  dfa_clear(b, b->tmp);
  m = dfa_closure(b, 0, 0, 0, b->tmp); /* unanchored: start again here */
  for (w = 0; w < b->words && !m; w++) {
    uint64_t bits = set[w];
    while (bits && !m) {
      pc = w * 64 + (uint32_t)__builtin_ctzll(bits);
      bits &= bits - 1;
      if (b->re->prog[pc].op != O_EOL &&
          step_ok(b->re, &b->re->prog[pc], b->d->lo[c]))
        m = dfa_closure(b, pc + 1, 0, 0, b->tmp);
    }
  }
  return dfa_intern(b, m);
}

/* Whether state st matches when the text ends in it: its $ hold then. */
static uint8_t dfa_at_end(struct dbuild *b, uint32_t st) {
  const uint64_t *set = b->sets + (size_t)st * b->words;
  uint32_t pc;
  int m = 0;
  dfa_clear(b, b->seen);
  for (pc = 0; pc < b->re->n && !m; pc++)
    if ((set[pc >> 6] >> (pc & 63) & 1) && b->re->prog[pc].op == O_EOL)
      m = dfa_closure(b, pc + 1, 0, 1, b->junk);
  return (uint8_t)m;
}

/* The value a transition holds for state id: the stop states are their
 * ids, the others the start of their row of the table, past d->base (which
 * is over every id, so an id in the table means "decode a code point,
 * then step from that state"). */
static uint32_t dfa_row(const struct dfa *d, uint32_t id) {
  return id < DFA_FIRST ? id : d->base + id * d->stride;
}

/* Run the subset construction; 0, or -1 over a cap. */
static int dfa_run(struct dbuild *b) {
  struct dfa *d = b->d;
  uint32_t st, c;
  int t;
  dfa_clear(b, b->seen);
  d->empty = (uint8_t)dfa_closure(b, 0, 1, 1, b->junk);
  dfa_clear(b, b->seen);
  dfa_clear(b, b->tmp);
  t = dfa_intern(b, dfa_closure(b, 0, 1, 0, b->tmp));
  if (t < 0)
    return -1;
  d->start = dfa_row(d, (uint32_t)t);
  for (st = DFA_FIRST; st < b->nst; st++) { /* b->nst grows as found */
    for (c = 0; c < d->ncls; c++) {
      t = dfa_step(b, st, c);
      if (t < 0 || b->work > DFA_BUDGET)
        return -1;
      d->next[dfa_row(d, st) + c] = (uint16_t)dfa_row(d, (uint32_t)t);
    }
    d->next[dfa_row(d, st) + d->ncls] = (uint16_t)st; /* decode, see search */
  }
  for (st = DFA_FIRST; st < b->nst; st++)
    d->at_end[st] = dfa_at_end(b, st);
  return 0;
}

static struct dfa *dfa_build(const struct sl_regex *re) {
  struct dbuild b;
  struct dfa *d = calloc(1, sizeof(*d));
  int rc = -1;
  memset(&b, 0, sizeof(b));
  if (d == NULL || dfa_classes(re, d) != 0)
    goto fail_;
  b.re = re;
  b.d = d;
  b.words = (re->n + 63) / 64;
  b.nst = DFA_FIRST;
  b.max = DFA_MAX_CELLS / d->stride;
  if (b.max > DFA_MAX_STATES)
    b.max = DFA_MAX_STATES;
  b.seen = malloc(3 * b.words * sizeof(uint64_t));
  b.sets = calloc((size_t)b.max * b.words, sizeof(uint64_t));
  b.hash = calloc(b.max, sizeof(uint64_t));
  b.stack = malloc(re->n * sizeof(uint16_t));
  d->base = b.max;
  d->next = calloc(d->base + (size_t)b.max * d->stride, sizeof(uint16_t));
  d->at_end = calloc(b.max, 1);
  if (b.seen == NULL || b.sets == NULL || b.hash == NULL || b.stack == NULL ||
      d->next == NULL || d->at_end == NULL)
    goto fail_;
  b.tmp = b.seen + b.words;
  b.junk = b.tmp + b.words;
  rc = dfa_run(&b);
  if (rc == 0) { /* keep the rows of the states found, not of the cap */
    uint16_t *t = realloc(d->next, (d->base + (size_t)b.nst * d->stride) *
                                       sizeof(uint16_t));
    if (t != NULL)
      d->next = t;
  }
fail_:
  free(b.seen);
  free(b.sets);
  free(b.hash);
  free(b.stack);
  if (rc != 0) {
    dfa_free(d);
    return NULL;
  }
  return d;
}

/* State id reads the code point at s (a byte >= 0x80), decoded as the NFA
 * decodes it (an invalid UTF-8 byte is one U+FFFD). Returns the next row
 * times 8 plus the code point's length in bytes. Out of line, so the byte
 * loop keeps its registers. */
static __attribute__((noinline)) uint32_t
dfa_wide(const struct dfa *d, uint32_t id, const uint8_t *s,
         const uint8_t *e) {
  size_t len = sl_utf8_seq(s, (size_t)(e - s), NULL), i;
  uint32_t cp = 0xfffd;
  if (len == 0) {
    len = 1;
  } else {
    cp = s[0] & (0xff >> (len + 1));
    for (i = 1; i < len; i++)
      cp = (cp << 6) | (s[i] & 0x3f);
  }
  return (uint32_t)d->next[dfa_row(d, id) + class_of(d, cp)] << 3 |
         (uint32_t)len;
}

/* A byte >= 0x80 leads every state to its own id, below d->base like the
 * stop states, so the ASCII loop tests one bound per byte. */
static int dfa_search(const struct dfa *d, const uint8_t *s, size_t n) {
  const uint16_t *next = d->next;
  const uint8_t *p = s, *e = s + n;
  size_t row = d->start, stop = d->base, c;
  if (n == 0)
    return d->empty;
  if (row < stop)
    return row == DFA_ACC;
  while (p < e) {
    row = next[row + d->asc[*p]];
    if (row < stop) {
      if (row < DFA_FIRST)
        return row == DFA_ACC;
      c = dfa_wide(d, (uint32_t)row, p, e);
      row = c >> 3;
      p += c & 7;
      if (row < stop)
        return row == DFA_ACC;
      continue;
    }
    p++;
  }
  return d->at_end[(row - d->base) / d->stride];
}

int sl_regex_search(const struct sl_regex *re, const uint8_t *s, size_t n) {
  if (re->dfa != NULL)
    return dfa_search(re->dfa, s, n);
  return sl_regex_search_nfa(re, s, n);
}

int sl_regex_has_dfa(const struct sl_regex *re) { return re->dfa != NULL; }
