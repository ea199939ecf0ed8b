// Emits log records with the OpenTelemetry JS SDK's OTLP/HTTP JSON exporter.
// Usage: node emit.js URL N (npm install in this folder first; test_otlp.py
// does it).
const { LoggerProvider, SimpleLogRecordProcessor } = require('@opentelemetry/sdk-logs');
const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-http');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { SeverityNumber } = require('@opentelemetry/api-logs');

async function main() {
  const [url, n] = [process.argv[2], Number(process.argv[3] || 3)];
  const exporter = new OTLPLogExporter({ url });
  const provider = new LoggerProvider({
    resource: resourceFromAttributes({ 'service.name': 'checkout' }),
    processors: [new SimpleLogRecordProcessor({ exporter })],
  });
  const logger = provider.getLogger('sluice-test', '2.0.0');
  for (let i = 0; i < n; i++) {
    logger.emit({
      severityNumber: SeverityNumber.WARN, severityText: 'WARN',
      body: { seq: i, msg: 'order ' + i }, attributes: { 'order.id': i, 'ok': true },
      timestamp: [1700000000, i],
    });
  }
  await provider.forceFlush();
  await provider.shutdown();
}
main().catch((e) => { console.error(e); process.exit(1); });
