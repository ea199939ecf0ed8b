/* nats_tool - a small libnats client for the nats tests (Debian ships no
 * nats CLI): create a stream, publish (core or JetStream, with headers),
 * consume a stream with a durable pull consumer or a core subscription.
 * Consumed messages print one line each: subject, headers ("k: v" lines)
 * and body, the last two hex-encoded, separated by tabs.
 *
 *   nats_tool stream URL NAME SUBJECT [--no-ack]  (--no-ack: the server
 *             stores what is published and never answers a publish)
 *   nats_tool rmstream URL NAME
 *   nats_tool pub URL SUBJECT COUNT [--js] [--start K] [--body FMT]
 *             [--hex HEX] [-H NAME:VALUE]...   (FMT: printf with %d = i)
 *   nats_tool consume URL STREAM DURABLE EXPECT IDLE_MS
 *   nats_tool sub URL SUBJECT EXPECT IDLE_MS     (prints "ready" first) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

static void die(const char *what, natsStatus s) {
  fprintf(stderr, "nats_tool: %s: %s (%s)\n", what, natsStatus_GetText(s),
          nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
  exit(1);
}

/* NATS_TOOL_CA (and NATS_TOOL_CERT/NATS_TOOL_KEY for mTLS) in the
 * environment: connect over TLS, for a server with a tls block. */
static natsConnection *connect_to(const char *url) {
  natsConnection *nc = NULL;
  natsOptions *o = NULL;
  const char *ca = getenv("NATS_TOOL_CA"), *cert = getenv("NATS_TOOL_CERT");
  natsStatus s = natsOptions_Create(&o);
  if (s == NATS_OK) s = natsOptions_SetURL(o, url);
  if (s == NATS_OK && ca) s = natsOptions_SetSecure(o, true);
  if (s == NATS_OK && ca) s = natsOptions_LoadCATrustedCertificates(o, ca);
  if (s == NATS_OK && cert)
    s = natsOptions_LoadCertificatesChain(o, cert, getenv("NATS_TOOL_KEY"));
  if (s == NATS_OK) s = natsConnection_Connect(&nc, o);
  natsOptions_Destroy(o);
  if (s != NATS_OK)
    die("connect", s);
  return nc;
}

static void hex(const unsigned char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    printf("%02x", p[i]);
}

static void print_msg(natsMsg *m) {
  const char **keys = NULL;
  int n = 0, i;
  char hb[8192];
  size_t hl = 0;
  printf("%s\t", natsMsg_GetSubject(m));
  if (natsMsgHeader_Keys(m, &keys, &n) == NATS_OK) {
    for (i = 0; i < n; i++) {
      const char *v = NULL;
      natsMsgHeader_Get(m, keys[i], &v);
      hl += (size_t)snprintf(hb + hl, sizeof(hb) - hl, "%s: %s\n", keys[i],
                             v ? v : "");
      if (hl >= sizeof(hb))
        hl = sizeof(hb) - 1;
    }
    free((void *)keys);
  }
  hex((const unsigned char *)hb, hl);
  printf("\t");
  hex((const unsigned char *)natsMsg_GetData(m),
      (size_t)natsMsg_GetDataLength(m));
  printf("\n");
}

static int cmd_stream(int argc, char **argv) {
  natsConnection *nc = connect_to(argv[0]);
  jsCtx *js = NULL;
  jsStreamConfig sc;
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  const char *subjects[1] = {argv[2]};
  natsStatus s = natsConnection_JetStream(&js, nc, NULL);
  if (s != NATS_OK)
    die("jetstream", s);
  jsStreamConfig_Init(&sc);
  sc.Name = argv[1];
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Storage = js_FileStorage;
  sc.NoAck = argc >= 4 && strcmp(argv[3], "--no-ack") == 0;
  s = js_AddStream(&si, js, &sc, NULL, &jerr);
  if (s != NATS_OK && jerr != JSStreamNameExistErr)
    die("add stream", s);
  jsStreamInfo_Destroy(si);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  return 0;
}

static int cmd_rmstream(char **argv) {
  natsConnection *nc = connect_to(argv[0]);
  jsCtx *js = NULL;
  jsErrCode jerr = 0;
  natsStatus s = natsConnection_JetStream(&js, nc, NULL);
  if (s != NATS_OK)
    die("jetstream", s);
  s = js_DeleteStream(js, argv[1], NULL, &jerr);
  if (s != NATS_OK)
    die("delete stream", s);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  return 0;
}

static int unhex(const char *h, char *out) {
  int n = 0;
  unsigned v;
  while (h[0] && h[1] && sscanf(h, "%2x", &v) == 1) {
    out[n++] = (char)v;
    h += 2;
  }
  return n;
}

static int cmd_pub(int argc, char **argv) {
  natsConnection *nc = connect_to(argv[0]);
  jsCtx *js = NULL;
  const char *subject = argv[1], *fmt = "{\"n\":%d}", *hx = NULL;
  int count = atoi(argv[2]), start = 0, usejs = 0, i, j, len;
  const char *hdrs[32];
  int nh = 0;
  char body[65536];
  natsStatus s;
  for (i = 3; i < argc; i++) {
    if (strcmp(argv[i], "--js") == 0) usejs = 1;
    else if (strcmp(argv[i], "--start") == 0) start = atoi(argv[++i]);
    else if (strcmp(argv[i], "--body") == 0) fmt = argv[++i];
    else if (strcmp(argv[i], "--hex") == 0) hx = argv[++i];
    else if (strcmp(argv[i], "-H") == 0 && nh < 32) hdrs[nh++] = argv[++i];
  }
  if (usejs && (s = natsConnection_JetStream(&js, nc, NULL)) != NATS_OK)
    die("jetstream", s);
  for (i = start; i < start + count; i++) {
    natsMsg *m = NULL;
    if (hx)
      len = unhex(hx, body);
    else
      len = snprintf(body, sizeof(body), fmt, i);
    if ((s = natsMsg_Create(&m, subject, NULL, body, len)) != NATS_OK)
      die("msg", s);
    for (j = 0; j < nh; j++) {
      char k[256];
      const char *c = strchr(hdrs[j], ':');
      if (c == NULL || (size_t)(c - hdrs[j]) >= sizeof(k))
        continue;
      memcpy(k, hdrs[j], (size_t)(c - hdrs[j]));
      k[c - hdrs[j]] = '\0';
      natsMsgHeader_Add(m, k, c + 1);
    }
    if (usejs) {
      jsPubAck *pa = NULL;
      s = js_PublishMsg(&pa, js, m, NULL, NULL);
      jsPubAck_Destroy(pa);
    } else {
      s = natsConnection_PublishMsg(nc, m);
    }
    natsMsg_Destroy(m);
    if (s != NATS_OK)
      die("publish", s);
  }
  natsConnection_FlushTimeout(nc, 5000);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  return 0;
}

static int cmd_consume(char **argv) {
  natsConnection *nc = connect_to(argv[0]);
  jsCtx *js = NULL;
  natsSubscription *sub = NULL;
  jsSubOptions so;
  jsErrCode jerr = 0;
  int expect = atoi(argv[3]), idle = atoi(argv[4]), got = 0;
  natsStatus s = natsConnection_JetStream(&js, nc, NULL);
  if (s != NATS_OK)
    die("jetstream", s);
  jsSubOptions_Init(&so);
  so.Stream = argv[1];
  so.Config.AckPolicy = js_AckExplicit;
  s = js_PullSubscribe(&sub, js, ">", argv[2], NULL, &so, &jerr);
  if (s != NATS_OK)
    die("pull subscribe", s);
  while (got < expect) {
    natsMsgList list = {0};
    int i;
    s = natsSubscription_Fetch(&list, sub, 256, idle, &jerr);
    if (s == NATS_TIMEOUT)
      break;
    if (s != NATS_OK)
      die("fetch", s);
    for (i = 0; i < list.Count; i++) {
      print_msg(list.Msgs[i]);
      natsMsg_Ack(list.Msgs[i], NULL);
      got++;
    }
    natsMsgList_Destroy(&list);
  }
  fflush(stdout);
  natsConnection_FlushTimeout(nc, 5000);
  natsSubscription_Destroy(sub);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  return 0;
}

static int cmd_sub(char **argv) {
  natsConnection *nc = connect_to(argv[0]);
  natsSubscription *sub = NULL;
  int expect = atoi(argv[2]), idle = atoi(argv[3]), got = 0;
  natsStatus s = natsConnection_SubscribeSync(&sub, nc, argv[1]);
  if (s != NATS_OK)
    die("subscribe", s);
  natsConnection_Flush(nc);
  printf("ready\n");
  fflush(stdout);
  while (got < expect) {
    natsMsg *m = NULL;
    s = natsSubscription_NextMsg(&m, sub, idle);
    if (s == NATS_TIMEOUT)
      break;
    if (s != NATS_OK)
      die("next", s);
    print_msg(m);
    natsMsg_Destroy(m);
    got++;
  }
  fflush(stdout);
  natsSubscription_Destroy(sub);
  natsConnection_Destroy(nc);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 5 && strcmp(argv[1], "stream") == 0)
    return cmd_stream(argc - 2, argv + 2);
  if (argc >= 4 && strcmp(argv[1], "rmstream") == 0)
    return cmd_rmstream(argv + 2);
  if (argc >= 5 && strcmp(argv[1], "pub") == 0)
    return cmd_pub(argc - 2, argv + 2);
  if (argc >= 7 && strcmp(argv[1], "consume") == 0)
    return cmd_consume(argv + 2);
  if (argc >= 6 && strcmp(argv[1], "sub") == 0)
    return cmd_sub(argv + 2);
  fprintf(stderr, "usage: see the comment at the top of nats_tool.c\n");
  return 2;
}
