// fhir.js (npm fhir.js 0.0.22) through the gateway; see docs/clients.md.
// Usage: NODE_PATH=<dir>/node_modules node tests/integration/node/fhirjs.js BASE "Bearer TOKEN"
// Prints one line per step (name, ok|FAIL, detail) and exits 1 if a step failed.
const mkFhir = require("fhir.js");
const [base, authorization] = process.argv.slice(2);
const client = mkFhir({ baseUrl: base, auth: { bearer: authorization.replace(/^Bearer /, "") } });
const results = [];
async function step(name, fn) {
  try { const r = await fn(); results.push([name, "ok", r]); }
  catch (e) { results.push([name, "FAIL", e && (e.status + " " + JSON.stringify(e.data || e.message || e).slice(0, 200))]); }
}
(async () => {
  let pid, vid;
  await step("conformance", async () => (await client.conformance({})).data.format.join(","));
  await step("create", async () => { const r = await client.create({ resource: { resourceType: "Patient", name: [{ family: "FhirJs" }] } }); pid = r.data.id; vid = r.data.meta.versionId; return `${r.status} ${pid}`; });
  await step("read", async () => (await client.read({ type: "Patient", id: pid })).data.id === pid);
  await step("vread", async () => (await client.vread({ type: "Patient", id: pid, versionId: vid })).status);
  await step("update", async () => (await client.update({ resource: { resourceType: "Patient", id: pid, gender: "female", name: [{ family: "FhirJs" }] } })).status);
  await step("patch", async () => (await client.patch({ type: "Patient", id: pid, data: [{ op: "add", path: "/birthDate", value: "1990-01-01" }] })).status);
  await step("resourceHistory", async () => (await client.resourceHistory({ type: "Patient", id: pid })).data.entry.length);
  await step("search", async () => (await client.search({ type: "Patient", query: { _id: pid } })).data.entry.length);
  await step("search+nextPage", async () => {
    for (let i = 0; i < 3; i++) await client.create({ resource: { resourceType: "Observation", status: "final", code: { text: "w" }, subject: { reference: `Patient/${pid}` } } });
    const first = await client.search({ type: "Observation", query: { subject: `Patient/${pid}`, _count: 2 } });
    const next = await client.nextPage({ bundle: first.data });
    return `${first.data.entry.length}+${next.data.entry.length}`;
  });
  await step("transaction", async () => {
    const r = await client.transaction({ bundle: { resourceType: "Bundle", type: "transaction", entry: [
      { fullUrl: "urn:uuid:11111111-1111-4111-8111-111111111111", resource: { resourceType: "Patient", name: [{ family: "Tx" }] }, request: { method: "POST", url: "Patient" } },
      { resource: { resourceType: "Observation", status: "final", code: { text: "w" }, subject: { reference: "urn:uuid:11111111-1111-4111-8111-111111111111" } }, request: { method: "POST", url: "Observation" } }] } });
    return `${r.status} ${r.data.type} ${r.config.url}`;
  });
  await step("batch", async () => (await client.transaction({ bundle: { resourceType: "Bundle", type: "batch", entry: [{ request: { method: "GET", url: `Patient/${pid}` } }] } })).data.type);
  await step("conditionalUpdate", async () => (await client.conditionalUpdate({ resource: { resourceType: "Patient", identifier: [{ system: "urn:fhirjs", value: "c1" }], name: [{ family: "Cond" }] }, query: { identifier: "urn:fhirjs|c1" } })).status);
  await step("delete", async () => (await client.delete({ type: "Patient", id: pid })).status);
  await step("read-after-delete (expect 404/410)", async () => { try { await client.read({ type: "Patient", id: pid }); return "unexpected 200"; } catch (e) { return e.status; } });
  for (const r of results) console.log(r.map(x => typeof x === "string" ? x : JSON.stringify(x)).join("\t"));
  process.exit(results.some(r => r[1] === "FAIL") ? 1 : 0);
})();
