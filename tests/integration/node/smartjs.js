// SMART's JS client (npm fhirclient 2.6.3) through the gateway; see docs/clients.md.
// Usage: NODE_PATH=<dir>/node_modules node tests/integration/node/smartjs.js BASE "Bearer TOKEN"
// Prints one line per step (name, ok|FAIL, detail) and exits 1 if a step failed.
const smart = require("fhirclient");
const { getSecurityExtensions } = require("fhirclient/lib/smart");
const [base, authorization] = process.argv.slice(2);
const req = { headers: { host: "localhost" }, url: "/", method: "GET", connection: {} };
const res = { writeHead() {}, end() {}, setHeader() {} };
const storage = { async get() {}, async set() {}, async unset() {} };
const client = smart(req, res, storage).client({
  serverUrl: base,
  tokenResponse: { access_token: authorization.replace(/^Bearer /, "") },
});
const results = [];
async function step(name, fn) {
  try { results.push([name, "ok", await fn()]); }
  catch (e) { results.push([name, "FAIL", String(e && (e.message || e)).slice(0, 300)]); }
}
(async () => {
  let pid;
  await step("discovery (getSecurityExtensions)", async () => JSON.stringify(await getSecurityExtensions(base)));
  await step("getFhirVersion (metadata)", async () => client.getFhirVersion());
  await step("create", async () => { const r = await client.create({ resourceType: "Patient", name: [{ family: "SmartJs" }] }); pid = r.id; return pid; });
  await step("request read", async () => (await client.request(`Patient/${pid}`)).id === pid);
  await step("update", async () => (await client.update({ resourceType: "Patient", id: pid, gender: "male", name: [{ family: "SmartJs" }] })).gender);
  await step("patch (JSON Patch)", async () => (await client.patch(`Patient/${pid}`, [{ op: "add", path: "/birthDate", value: "1980-02-02" }])).birthDate);
  await step("search pageLimit 0 + resolveReferences", async () => {
    for (let i = 0; i < 3; i++) await client.create({ resourceType: "Observation", status: "final", code: { text: "w" }, subject: { reference: `Patient/${pid}` } });
    const pages = await client.request(`Observation?subject=Patient/${pid}&_count=2`, { pageLimit: 0, flat: true, resolveReferences: ["subject"] });
    return `${pages.length} resources, subject resolved: ${!!(pages[0].subject && pages[0].subject.resourceType)}`;
  });
  await step("transaction POST {base}/", async () => {
    const r = await client.request({ url: "/", method: "POST", headers: { "content-type": "application/fhir+json" }, body: JSON.stringify({ resourceType: "Bundle", type: "transaction", entry: [
      { fullUrl: "urn:uuid:22222222-2222-4222-8222-222222222222", resource: { resourceType: "Patient", name: [{ family: "Tx" }] }, request: { method: "POST", url: "Patient" } }] }) });
    return r.type;
  });
  await step("delete", async () => { await client.delete(`Patient/${pid}`); return "deleted"; });
  for (const r of results) console.log(r.join("\t"));
  process.exit(results.some(r => r[1] === "FAIL") ? 1 : 0);
})();
