// imroute dashboard: plain JavaScript, no dependencies. Every URL is
// relative to the page (served at `ui`), so the page works behind a reverse
// proxy that mounts imroute under a path. Data is written with textContent
// only: nothing from the server is ever parsed as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'imroute.admin_token';
  const REFRESH_MS = 3000;
  const SAMPLE = 100000;
  const REQUEST_TIMEOUT_MS = 15000;
  const FIELDS = ['region', 'state', 'weight', 'health', 'connections', 'share', 'full', 'source', 'version'];
  const ACTIONS = [
    ['Drain', 'drain', { state: 'draining' }],
    ['Activate', 'activate', { state: 'active' }],
    ['Disable', 'disable', { state: 'disabled' }],
    ['Weight', 'weight', null],
  ];

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...children) => {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'scope' || k === 'role') e.setAttribute(k, v);
        else e[k] = v;
      }
    }
    for (const c of children) e.append(c);
    return e;
  };
  const setText = (node, text) => {
    const t = String(text);
    if (node.textContent !== t) node.textContent = t;
  };
  const setClass = (node, cls) => {
    if (node.className !== cls) node.className = cls;
  };

  class AuthError extends Error {}

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  // Bumped at every sign-in and sign-out: answers to an earlier session's
  // requests are dropped.
  let session = 0;
  let timer = null;
  let inflight = null;
  const nodes = new Map(); // id -> node
  let shares = null; // id -> share, from the last distribution
  let distRevision = null;
  let sampleSize = 0;
  const sort = { key: 'id', dir: 1 };
  let filterText = '';
  const rows = new Map(); // id -> { tr, cells, buttons }
  let order = []; // ids of the sorted, filtered nodes
  let page = 0;
  let pageSize = 100;
  let chartKey = '';
  let pending = null; // the change being previewed

  // ----- the API -----

  async function api(method, path, body, headers) {
    // A request that hangs must not stop the refreshes for good.
    const init = {
      method,
      headers: { Authorization: 'Bearer ' + token, ...(headers || {}) },
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = { msg: text };
      }
    }
    if (resp.status === 401 && path.startsWith('admin/')) throw new AuthError('unauthorized');
    return { status: resp.status, ok: resp.ok, data, headers: resp.headers };
  }

  const message = (r) => (r.data && r.data.msg) || `HTTP ${r.status}`;
  // A path segment: ids `.` and `..` are valid, and must not be read as
  // "this folder" or "the parent".
  const segment = (id) => encodeURIComponent(id).replace(/\./g, '%2E');

  // ----- sign-in -----

  function showSignIn(error) {
    $('dash-view').hidden = true;
    $('sign-out').hidden = true;
    $('signin-view').hidden = false;
    setText($('signin-error'), error || '');
    setText($('top-revision'), '');
    $('token').value = '';
    $('token').focus();
  }

  function showDashboard() {
    $('signin-view').hidden = true;
    $('dash-view').hidden = false;
    $('sign-out').hidden = false;
  }

  function signOut(error) {
    sessionStorage.removeItem(TOKEN_KEY);
    token = '';
    session += 1;
    clearTimeout(timer);
    nodes.clear();
    rows.clear();
    order = [];
    shares = null;
    distRevision = null;
    chartKey = '';
    page = 0;
    for (const id of ['nodes-body', 'chart', 'audit', 'replicas', 'lookup-result']) {
      $(id).replaceChildren();
      delete $(id).dataset.key;
    }
    for (const id of ['banner', 'strategy-name', 'strategy-kind', 'strategy-source', 'revision', 'routable',
      'total', 'panic', 'overrides-status', 'overrides-path', 'overrides-error', 'converged', 'store', 'nodes-count']) {
      setText($(id), '');
    }
    $('filter').value = '';
    filterText = '';
    $('lookup-uid').value = '';
    $('lookup-region').value = '';
    if ($('preview').open) closePreview();
    showSignIn(error);
  }

  async function signIn(event) {
    event.preventDefault();
    const typed = $('token').value.trim();
    if (!typed) {
      setText($('signin-error'), 'Type the admin token.');
      return;
    }
    token = typed;
    try {
      const r = await api('GET', 'admin/routing');
      if (!r.ok) {
        token = '';
        setText($('signin-error'), `The server answered: ${message(r)}`);
        return;
      }
    } catch (e) {
      token = '';
      setText($('signin-error'), e instanceof AuthError
        ? 'Wrong token: the server refused it. Check it and try again.'
        : `Cannot reach the server (${e.message}).`);
      $('token').select();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    session += 1;
    setText($('signin-error'), '');
    showDashboard();
    await refresh();
    schedule();
  }

  // ----- refreshing -----

  // Every 3 s; slower for big fleets (a node list of thousands costs the
  // server real work) and backing off while requests fail.
  let failures = 0;
  function interval() {
    const base = nodes.size > 2000 ? REFRESH_MS * 3 : REFRESH_MS;
    return Math.min(base * 2 ** Math.min(failures, 4), 30000);
  }

  function schedule() {
    clearTimeout(timer);
    if (!token || document.hidden) return;
    timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, interval());
  }

  function refresh() {
    if (!token) return Promise.resolve();
    if (!inflight) inflight = load().finally(() => { inflight = null; });
    return inflight;
  }

  async function load() {
    const mine = session;
    try {
      // One after another: one connection per tab, not five (the admin
      // listener's connections are shared with the gateways' heartbeats).
      const n = await api('GET', 'admin/nodes');
      const r = await api('GET', 'admin/routing');
      const o = await api('GET', 'admin/overrides?effective=false');
      const c = await api('GET', 'admin/cluster');
      const a = await api('GET', 'admin/audit?limit=10');
      if (!token || mine !== session) return;
      if (n.ok) {
        const seen = new Set();
        for (const node of n.data) {
          nodes.set(node.id, node);
          seen.add(node.id);
        }
        for (const id of [...nodes.keys()]) if (!seen.has(id)) nodes.delete(id);
      }
      if (r.ok) renderRouting(r.data);
      if (o.ok) renderOverrides(o.data);
      if (c.ok) renderCluster(c.data);
      if (a.ok) renderAudit(a.data);
      // The table first; the shares follow when they are counted.
      renderNodes();
      // The distribution changes only with the revision.
      if (r.ok && r.data.revision !== distRevision) {
        const d = await api('GET', `admin/routing/distribution?sample=${SAMPLE}`);
        if (mine !== session) return;
        if (d.ok) {
          shares = new Map(d.data.nodes.map((x) => [x.node_id, x.share]));
          distRevision = d.data.revision;
          sampleSize = d.data.sample_size;
          setText($('sample-size'), sampleSize.toLocaleString('en'));
          setText($('max-over-mean'), Number(d.data.max_over_mean).toFixed(3));
        }
      }
      renderNodes();
      const failed = [n, r, o, c, a].find((x) => !x.ok);
      failures = failed ? failures + 1 : 0;
      setText($('banner'), failed ? `Some data could not be loaded: ${message(failed)}` : '');
    } catch (e) {
      if (mine !== session) return;
      if (e instanceof AuthError) {
        signOut('The server no longer accepts this token; sign in again.');
        return;
      }
      failures += 1;
      setText($('banner'), `Cannot reach the server (${e.message}); retrying in ${Math.round(interval() / 1000)} s.`);
    }
  }

  // ----- summary cards -----

  function renderRouting(r) {
    setText($('strategy-name'), r.active_strategy);
    setText($('strategy-kind'), r.kind);
    setText($('strategy-source'), r.source === 'overrides' ? 'the overrides file' : 'the database');
    setText($('revision'), r.revision);
    setText($('top-revision'), `revision ${r.revision}`);
    setText($('routable'), r.nodes_routable);
    setText($('total'), r.nodes_total);
    setText($('panic'), r.panic_mode ? 'ON' : 'off');
    setClass($('panic'), r.panic_mode ? 'big bad' : 'big ok');
    setText($('panic-note'), r.panic_mode
      ? 'no node is healthy: routing over every active node'
      : 'routing over healthy nodes');
  }

  function renderOverrides(o) {
    const bad = o.status !== 'ok';
    setText($('overrides-status'), bad ? 'error (last good file in effect)' : 'ok');
    setClass($('overrides-status'), bad ? 'big bad' : 'big ok');
    setText($('overrides-path'), o.path + (o.loaded_at ? ` · loaded ${when(o.loaded_at)}` : ''));
    $('overrides-error').hidden = !bad;
    setText($('overrides-error'), bad ? o.error || '' : '');
  }

  function renderCluster(c) {
    setText($('converged'), c.converged ? 'converged' : 'NOT converged');
    setClass($('converged'), c.converged ? 'big ok' : 'big bad');
    setText($('store'), `${c.store.kind} (${c.store.up ? 'up' : 'DOWN'})`);
    const body = $('replicas');
    const key = JSON.stringify(c.replicas.map((x) => [x.id, x.revision, x.last_seen]));
    if (body.dataset.key === key) return;
    body.dataset.key = key;
    body.replaceChildren(...c.replicas.map((x) => el('tr', null,
      el('td', { text: x.id, title: x.addr }),
      el('td', { class: 'mono', text: x.revision }),
      el('td', { text: when(x.last_seen) }))));
  }

  function renderAudit(list) {
    const body = $('audit');
    const key = list.map((x) => x.id).join(',');
    if (body.dataset.key === key) return;
    body.dataset.key = key;
    body.replaceChildren(...list.map((x) => el('tr', null,
      el('td', { text: when(x.at) }),
      el('td', { class: 'mono', text: x.action }),
      el('td', { text: x.target }),
      el('td', { text: x.actor }),
      el('td', { class: 'mono', text: x.request_id }))));
  }

  // One formatter (toLocaleString builds one per call: slow at 1,000 rows).
  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });
  function when(s) {
    const d = new Date(s);
    return Number.isNaN(d.getTime()) ? s : timeFormat.format(d);
  }

  // ----- the nodes table -----

  const shareOf = (id) => (shares ? shares.get(id) || 0 : null);

  function value(n, key) {
    switch (key) {
      case 'id': return n.id;
      case 'region': return n.region || '';
      case 'health': return n.health.status;
      case 'connections': return n.health.connections ?? -1;
      case 'share': return shareOf(n.id) ?? 0;
      case 'full': return n.health.full ? 1 : 0;
      default: return n[key];
    }
  }

  function compare(a, b) {
    const x = value(a, sort.key);
    const y = value(b, sort.key);
    let c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    if (c === 0 && sort.key !== 'id') c = a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    return c * sort.dir;
  }

  function makeRow(id) {
    const tr = el('tr', { 'data-node-id': id });
    const cells = { id: el('th', { scope: 'row', class: 'mono', text: id }) };
    tr.append(cells.id);
    for (const f of FIELDS) {
      const numeric = ['weight', 'connections', 'share', 'version'].includes(f);
      cells[f] = el('td', { class: numeric ? 'num' : '' });
      tr.append(cells[f]);
    }
    cells.healthStatus = el('span');
    cells.healthReason = el('span', { class: 'reason' });
    cells.health.append(cells.healthStatus, cells.healthReason);
    const actions = el('td', { class: 'actions' });
    const buttons = {};
    for (const [label, action] of ACTIONS) {
      const b = el('button', { type: 'button', text: label, title: `${label} ${id}`, 'data-action': action });
      buttons[action] = b;
      actions.append(b);
    }
    tr.append(actions);
    const row = { tr, cells, buttons };
    rows.set(id, row);
    return row;
  }

  function updateRow(row, n) {
    const c = row.cells;
    setText(c.region, n.region || '–');
    setText(c.state, n.state);
    setClass(c.state, n.state === 'active' ? '' : 'warn');
    setText(c.weight, n.weight);
    const h = n.health;
    setText(c.healthStatus, h.status);
    setClass(c.healthStatus, h.status === 'healthy' ? 'ok' : h.status === 'unhealthy' ? 'bad' : 'muted-inline');
    setText(c.healthReason, h.since ? `${h.reason} · since ${when(h.since)}` : h.reason);
    setText(c.connections, h.connections ?? '–');
    const s = shareOf(n.id);
    setText(c.share, s === null ? '–' : `${(s * 100).toFixed(1)}%`);
    setText(c.full, h.full ? 'full' : 'no');
    setClass(c.full, h.full ? 'bad' : '');
    setText(c.source, n.source);
    setText(c.version, n.version);
    // The file alone defines a node that the database does not hold.
    const fileOnly = n.source === 'overrides';
    const b = row.buttons;
    b.drain.disabled = fileOnly || n.state === 'draining';
    b.activate.disabled = fileOnly || n.state === 'active';
    b.disable.disabled = fileOnly || n.state === 'disabled';
    b.weight.disabled = fileOnly;
  }

  function matches(n) {
    if (!filterText) return true;
    const hay = [n.id, n.region || '', n.state, n.health.status, n.source, n.health.full ? 'full' : '']
      .join(' ').toLowerCase();
    return filterText.split(/\s+/).every((w) => hay.includes(w));
  }

  // The table shows one page of the sorted, filtered nodes (rows are
  // created once per node and patched in place); the chart shows them all.
  function renderNodes() {
    const started = performance.now();
    for (const [id, row] of rows) {
      if (!nodes.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    order = [...nodes.values()].filter(matches).sort(compare).map((n) => n.id);
    const pages = Math.max(1, Math.ceil(order.length / pageSize));
    page = Math.min(page, pages - 1);
    const shown = order.slice(page * pageSize, (page + 1) * pageSize);
    const body = $('nodes-body');
    const focused = document.activeElement;
    // Move only the rows that are out of place.
    shown.forEach((id, i) => {
      const row = rows.get(id) || makeRow(id);
      updateRow(row, nodes.get(id));
      const at = body.children[i];
      if (at !== row.tr) body.insertBefore(row.tr, at || null);
    });
    while (body.children.length > shown.length) body.lastElementChild.remove();
    if (focused && focused !== document.activeElement && focused.isConnected) focused.focus({ preventScroll: true });
    setText($('nodes-count'), filterText ? `${order.length} of ${nodes.size} nodes` : `${nodes.size} nodes`);
    setText($('page-info'), order.length
      ? `${page * pageSize + 1}–${page * pageSize + shown.length} of ${order.length}`
      : 'no nodes');
    $('page-prev').disabled = page === 0;
    $('page-next').disabled = page >= pages - 1;
    $('pager').hidden = order.length <= pageSize;
    renderChart();
    // The slowest render so far, layout included (read by the tests).
    void body.offsetHeight;
    const ms = performance.now() - started;
    if (!(Number(document.body.dataset.renderMs) >= ms)) document.body.dataset.renderMs = ms.toFixed(1);
  }

  function renderChart() {
    const svg = $('chart');
    const ids = order;
    const key = shares ? distRevision + '|' + ids.join(',') + '|' + ids.map((id) => (nodes.get(id).health.full ? 1 : 0)).join('') : '';
    if (key === chartKey) return;
    chartKey = key;
    const ns = 'http://www.w3.org/2000/svg';
    const width = Math.max(ids.length, 1) * 10;
    svg.setAttribute('viewBox', `0 0 ${width} 100`);
    if (!shares) {
      svg.replaceChildren();
      return;
    }
    const max = Math.max(...ids.map(shareOf), 1e-9);
    const bars = ids.map((id, i) => {
      const s = shareOf(id);
      const h = (s / max) * 96;
      const rect = document.createElementNS(ns, 'rect');
      rect.setAttribute('x', i * 10 + 1);
      rect.setAttribute('width', 8);
      rect.setAttribute('y', 100 - h);
      rect.setAttribute('height', h);
      rect.setAttribute('data-node', id);
      if (nodes.get(id).health.full) rect.setAttribute('class', 'full');
      const title = document.createElementNS(ns, 'title');
      title.textContent = `${id}: ${(s * 100).toFixed(2)}% of users`;
      rect.append(title);
      return rect;
    });
    const routable = [...shares.values()].filter((s) => s > 0).length;
    if (routable > 0) {
      const mean = 1 / routable;
      const y = 100 - (mean / max) * 96;
      const line = document.createElementNS(ns, 'line');
      line.setAttribute('x1', 0);
      line.setAttribute('x2', width);
      line.setAttribute('y1', y);
      line.setAttribute('y2', y);
      bars.push(line);
    }
    svg.replaceChildren(...bars);
  }

  function onSort(event) {
    const th = event.target.closest('th[data-sort]');
    if (!th) return;
    page = 0;
    const key = th.dataset.sort;
    sort.dir = sort.key === key ? -sort.dir : 1;
    sort.key = key;
    for (const other of document.querySelectorAll('#nodes th[data-sort]')) {
      if (other === th) other.setAttribute('aria-sort', sort.dir > 0 ? 'ascending' : 'descending');
      else other.removeAttribute('aria-sort');
    }
    renderNodes();
  }

  // ----- preview and apply -----
  //
  // One dialog at a time; `pending` is its state. Every await is followed by
  // a check that the dialog is still the one the request was made for, and
  // every preview carries a number, so a late answer never acts on a newer
  // dialog or a newer preview. Apply sends exactly the change last shown.

  function onAction(event) {
    const b = event.target.closest('button[data-action]');
    if (!b) return;
    const id = b.closest('tr').dataset.nodeId;
    const node = nodes.get(id);
    if (!node) return;
    const [label, action, patch] = ACTIONS.find((x) => x[1] === b.dataset.action);
    pending = { id, version: node.version, label, action, seq: 0, shown: null, stale: false, busy: false, opener: b };
    setText($('preview-title'), `${label} ${id}`);
    $('preview-body').replaceChildren();
    setText($('preview-error'), '');
    $('preview-reload').hidden = true;
    $('preview-apply').disabled = true;
    $('weight-row').hidden = action !== 'weight';
    $('preview').showModal();
    if (action === 'weight') {
      $('weight-input').value = node.weight;
      $('weight-input').focus();
      $('weight-input').select();
    } else {
      preview(pending, patch);
    }
  }

  function weightPatch() {
    const raw = $('weight-input').value.trim();
    const w = Number(raw);
    if (raw === '' || !Number.isInteger(w) || w < 0 || w > 65535) {
      setText($('preview-error'), 'The weight is a whole number from 0 to 65535.');
      return null;
    }
    return { weight: w };
  }

  function canApply(mine) {
    $('preview-apply').disabled = !(pending === mine && mine.shown && !mine.stale && !mine.busy);
  }

  async function preview(mine, patch) {
    if (!mine || pending !== mine || !patch) return;
    const seq = ++mine.seq;
    mine.shown = null;
    canApply(mine);
    if (!mine.stale) setText($('preview-error'), '');
    $('preview-body').replaceChildren(el('p', { class: 'muted', text: 'Computing what this would move…' }));
    let r;
    try {
      r = await api('POST', 'admin/routing/simulate', {
        changes: [{ op: 'patch_node', id: mine.id, patch }],
        sample: { count: SAMPLE, seed: 1 },
      });
    } catch (e) {
      if (e instanceof AuthError) return signOut('The server no longer accepts this token; sign in again.');
      if (pending !== mine || seq !== mine.seq) return;
      setText($('preview-error'), `Cannot reach the server (${e.message}).`);
      $('preview-body').replaceChildren();
      return;
    }
    if (pending !== mine || seq !== mine.seq) return;
    if (!r.ok) {
      $('preview-body').replaceChildren();
      setText($('preview-error'), message(r));
      return;
    }
    const s = r.data;
    const flows = s.flows.slice(0, 5);
    const what = Object.entries(patch).map(([k, v]) => `${k} → ${v}`).join(', ');
    const table = flows.length
      ? el('table', { class: 'small', 'aria-label': 'Largest flows' },
        el('thead', null, el('tr', null,
          el('th', { scope: 'col', text: 'From' }), el('th', { scope: 'col', text: 'To' }),
          el('th', { scope: 'col', text: 'Users' }))),
        el('tbody', null, ...flows.map((f) => el('tr', null,
          el('td', { text: f.from ?? '(none)' }), el('td', { text: f.to ?? '(none)' }),
          el('td', { class: 'num', text: f.users.toLocaleString('en') })))))
      : el('p', { class: 'muted', text: 'Nobody would move.' });
    $('preview-body').replaceChildren(
      el('p', { text: `${mine.id}: ${what}` }),
      el('p', { class: 'moved', 'data-moved': String(s.moved_fraction), text: `${(s.moved_fraction * 100).toFixed(2)}% of users would move` }),
      el('p', { class: 'muted', text: `${s.moved.toLocaleString('en')} of ${s.sample_size.toLocaleString('en')} sampled users; largest flows:` }),
      table);
    mine.shown = patch;
    canApply(mine);
  }

  async function apply() {
    const mine = pending;
    if (!mine || !mine.shown || mine.stale || mine.busy) return;
    const patch = mine.shown;
    mine.busy = true;
    canApply(mine);
    let r;
    try {
      r = await api('PATCH', `admin/nodes/${segment(mine.id)}`, patch, { 'If-Match': `"${mine.version}"` });
    } catch (e) {
      mine.busy = false;
      if (e instanceof AuthError) return signOut('The server no longer accepts this token; sign in again.');
      if (pending !== mine) return;
      setText($('preview-error'), `Cannot reach the server (${e.message}).`);
      canApply(mine);
      return;
    }
    mine.busy = false;
    if (r.ok) nodes.set(r.data.id, r.data);
    if (pending !== mine) {
      if (r.ok) renderNodes();
      return;
    }
    if (r.status === 412) {
      mine.stale = true;
      setText($('preview-error'),
        `Someone else changed ${mine.id} after you opened this preview (you saw version ${mine.version}). ` +
        'Nothing was applied. Reload to see the node as it is now and preview again.');
      $('preview-reload').hidden = false;
      $('preview-reload').focus();
      canApply(mine);
      return;
    }
    if (!r.ok) {
      setText($('preview-error'), message(r));
      canApply(mine);
      return;
    }
    closePreview();
    await refresh();
  }

  async function reloadNode() {
    const mine = pending;
    if (!mine) return;
    let r;
    try {
      r = await api('GET', `admin/nodes/${segment(mine.id)}`);
    } catch (e) {
      if (e instanceof AuthError) return signOut('The server no longer accepts this token; sign in again.');
      if (pending !== mine) return;
      setText($('preview-error'), `Cannot reach the server (${e.message}).`);
      return;
    }
    if (pending !== mine) return;
    if (!r.ok) {
      setText($('preview-error'), message(r));
      return;
    }
    nodes.set(r.data.id, r.data);
    renderNodes();
    mine.version = r.data.version;
    mine.stale = false;
    setText($('preview-error'), '');
    $('preview-reload').hidden = true;
    if (mine.action === 'weight') {
      const patch = weightPatch();
      if (patch) await preview(mine, patch);
    } else {
      await preview(mine, ACTIONS.find((x) => x[1] === mine.action)[2]);
    }
  }

  function closePreview() {
    const opener = pending && pending.opener;
    pending = null;
    if ($('preview').open) $('preview').close();
    if (opener && opener.isConnected && !opener.disabled) opener.focus();
  }

  // ----- uid lookup -----

  async function lookup(event) {
    event.preventDefault();
    const uid = $('lookup-uid').value;
    const out = $('lookup-result');
    if (!uid) {
      out.replaceChildren(el('p', { class: 'error', text: 'Type a uid.' }));
      return;
    }
    const q = new URLSearchParams({ uid, candidates: '3' });
    const region = $('lookup-region').value.trim();
    if (region) q.set('region', region);
    let r;
    try {
      // The public endpoint: no token goes with it.
      const resp = await fetch(`route?${q}`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
      const text = await resp.text();
      let data = null;
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = { msg: text };
      }
      r = { ok: resp.ok, status: resp.status, data };
    } catch (e) {
      out.replaceChildren(el('p', { class: 'error', text: `Cannot reach the server (${e.message}).` }));
      return;
    }
    if (!r.ok) {
      out.replaceChildren(el('p', { class: 'error', text: message(r) }));
      return;
    }
    const a = r.data;
    out.replaceChildren(
      el('p', null, `${uid} → `, el('strong', { class: 'mono', 'data-node': a.node_id, text: a.node_id }),
        ` (tcp ${a.tcp_addr || '–'}${a.ws_addr ? `, ws ${a.ws_addr}` : ''}${a.wss_addr ? `, wss ${a.wss_addr}` : ''})`),
      el('p', { class: 'muted', text: 'Candidates, in the order this user fails over:' }),
      el('ol', { class: 'candidates' }, ...(a.candidates || []).map((c) => el('li', { class: 'mono', text: `${c.node_id}${c.region ? ` (${c.region})` : ''} ${c.tcp_addr}` }))));
  }

  // ----- wiring -----

  document.addEventListener('DOMContentLoaded', () => {
    $('signin-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', () => signOut(''));
    $('lookup-form').addEventListener('submit', lookup);
    let filterTimer = null;
    $('filter').addEventListener('input', (e) => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => {
        filterText = e.target.value.trim().toLowerCase();
        page = 0;
        renderNodes();
      }, 120);
    });
    $('page-prev').addEventListener('click', () => { page = Math.max(0, page - 1); renderNodes(); });
    $('page-next').addEventListener('click', () => { page += 1; renderNodes(); });
    $('page-size').addEventListener('change', (e) => {
      pageSize = Number(e.target.value) || 100;
      page = 0;
      renderNodes();
    });
    document.querySelector('#nodes thead').addEventListener('click', onSort);
    $('nodes-body').addEventListener('click', onAction);
    $('weight-preview').addEventListener('click', () => preview(pending, weightPatch()));
    $('weight-input').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') {
        e.preventDefault();
        preview(pending, weightPatch());
      }
    });
    // An edited weight is not the one previewed: preview it first.
    $('weight-input').addEventListener('input', () => {
      if (!pending) return;
      pending.seq += 1;
      pending.shown = null;
      canApply(pending);
      $('preview-body').replaceChildren(el('p', { class: 'muted', text: 'Preview the new weight to see what it would move.' }));
    });
    $('preview-apply').addEventListener('click', apply);
    $('preview-cancel').addEventListener('click', closePreview);
    $('preview-reload').addEventListener('click', reloadNode);
    $('preview').addEventListener('close', () => { pending = null; });
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) clearTimeout(timer);
      else if (token) refresh().then(schedule);
    });
    if (token) {
      showDashboard();
      refresh().then(schedule);
    } else {
      showSignIn('');
    }
  });
})();
