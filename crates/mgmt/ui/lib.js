// Shared helpers: the API client (basic auth from sessionStorage), DOM building that only
// ever sets text (never innerHTML with data), notices, forms, a server-side paged table.

const AUTH_KEY = 'warren.auth';

export class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

export function basicAuth(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return 'Basic ' + btoa(binary);
}

export const session = {
  get auth() { return sessionStorage.getItem(AUTH_KEY); },
  set auth(value) {
    if (value) sessionStorage.setItem(AUTH_KEY, value);
    else sessionStorage.removeItem(AUTH_KEY);
  },
};

// One path segment: names may hold '/', '%', '#' ... (the default vhost '/' becomes %2F).
export const enc = encodeURIComponent;

// Calls the management API; resolves to the parsed JSON (null when there is no body),
// rejects with an ApiError carrying the API's `reason`.
export async function api(method, path, body, { auth = session.auth, headers = {} } = {}) {
  const init = { method, headers: { Authorization: auth, 'X-Warren-UI': '1', ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) {
    if (res.status === 401 && res.headers.get('x-warren-login-failed') && auth === session.auth) window.dispatchEvent(new Event('warren-logout'));
    const reason = (json && (json.reason || json.error)) || text || res.statusText;
    throw new ApiError(res.status, reason);
  }
  return json;
}

// h('td', {class: 'num'}, 'text', node, ...): strings become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function flash(message, isError = false) {
  const box = document.getElementById('flash');
  const div = h('div', { class: isError ? 'err' : '' }, message);
  box.append(div);
  setTimeout(() => div.remove(), isError ? 8000 : 4000);
}

// Runs an action, showing its error (the API's reason) instead of throwing.
export async function attempt(fn, done) {
  try {
    const result = await fn();
    if (done) flash(done);
    return result;
  } catch (e) {
    flash(e instanceof ApiError ? `Error ${e.status}: ${e.message}` : String(e), true);
    return undefined;
  }
}

export function fmtNum(n) {
  if (n === undefined || n === null) return '';
  return Number(n).toLocaleString('en-US');
}

export function fmtRate(r) {
  if (r === undefined || r === null) return '';
  const n = Number(r);
  return `${n.toFixed(n >= 100 ? 0 : n > 0 && n < 1 ? 2 : 1)}/s`;
}

export function get(obj, dotted) {
  return dotted.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

export function parseJsonField(text, what) {
  if (!text.trim()) return {};
  try { return JSON.parse(text); } catch { throw new Error(`${what} is not valid JSON`); }
}

export function confirmDo(question) {
  return window.confirm(question);
}

// A form whose submit handler gets the values by name; errors go to flash.
export function form(attrs, children, onSubmit) {
  const f = h('form', attrs, ...children);
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const values = {};
    for (const el of f.elements) {
      if (!el.name) continue;
      values[el.name] = el.type === 'checkbox' ? el.checked : el.value;
    }
    await attempt(() => onSubmit(values, f));
  });
  return f;
}

export function field(label, input) {
  return [h('label', { for: input.id }, label), input];
}

let vhostCache = null;
export async function vhostNames() {
  if (!vhostCache) {
    const list = await api('GET', '/api/vhosts?columns=name');
    vhostCache = list.map((v) => v.name);
  }
  return vhostCache;
}
export function forgetVhosts() { vhostCache = null; }

export async function vhostSelect(attrs = {}, withAll = false) {
  const names = await vhostNames();
  const sel = h('select', attrs);
  if (withAll) sel.append(h('option', { value: '' }, 'All vhosts'));
  for (const n of names) sel.append(h('option', { value: n }, n));
  return sel;
}

export function table(headers, rows, emptyText = 'Nothing here') {
  const head = h('tr', {}, headers.map((x) => (x instanceof Node ? x : h('th', {}, x))));
  const body = h('tbody');
  if (rows.length === 0) body.append(h('tr', {}, h('td', { class: 'empty', colspan: headers.length }, emptyText)));
  else body.append(...rows);
  return h('table', {}, h('thead', {}, head), body);
}

export function td(text, cls) { return h('td', cls ? { class: cls } : {}, text ?? ''); }
export function tdNum(n) { return h('td', { class: 'num' }, fmtNum(n)); }

// A table paged by the server (`page`, `page_size`, `name`, `use_regex`, `sort`,
// `sort_reverse`, `columns`): never asks for the whole list.
// opts: {base(vhost) -> path, columns: [{title, key?, num?, render(item) -> td}], fields, id}
export function pagedTable(opts) {
  const state = { page: 1, pageSize: 50, name: '', regex: false, sort: 'name', reverse: false, vhost: '' };
  const root = h('div', { class: 'paged', id: opts.id });
  const filter = h('input', { type: 'search', placeholder: 'Filter by name', id: `${opts.id}-filter` });
  const regex = h('input', { type: 'checkbox', id: `${opts.id}-regex` });
  const size = h('select', { id: `${opts.id}-size` }, [20, 50, 100, 500].map((n) => h('option', { value: n }, n)));
  size.value = '50';
  const info = h('span', { class: 'muted' });
  const prev = h('button', { type: 'button' }, '‹ Prev');
  const next = h('button', { type: 'button' }, 'Next ›');
  const holder = h('div');
  const bar = h('div', { class: 'pager' }, filter, h('label', {}, regex, 'Regex'),
    h('label', {}, 'Page size', size), prev, next, info);
  root.append(bar, holder);
  let timer = null;
  filter.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.name = filter.value; state.page = 1; load(); }, 250);
  });
  regex.addEventListener('change', () => { state.regex = regex.checked; state.page = 1; load(); });
  size.addEventListener('change', () => { state.pageSize = Number(size.value); state.page = 1; load(); });
  prev.addEventListener('click', () => { if (state.page > 1) { state.page--; load(); } });
  next.addEventListener('click', () => { state.page++; load(); });
  if (opts.vhostFilter) {
    vhostSelect({ id: `${opts.id}-vhost` }, true).then((sel) => {
      sel.addEventListener('change', () => { state.vhost = sel.value; state.page = 1; load(); });
      bar.prepend(h('label', {}, 'Vhost', sel));
    }).catch(() => {});
  }

  async function load() {
    const q = new URLSearchParams({ page: state.page, page_size: state.pageSize });
    if (state.name) q.set('name', state.name);
    if (state.regex) q.set('use_regex', 'true');
    if (state.sort) q.set('sort', state.sort);
    if (state.reverse) q.set('sort_reverse', 'true');
    if (opts.fields) q.set('columns', opts.fields.join(','));
    let data;
    try {
      data = await api('GET', `${opts.base(state.vhost)}?${q}`);
    } catch (e) {
      if (e instanceof ApiError && e.message.includes('page out of range') && state.page > 1) {
        state.page = 1;
        return load();
      }
      holder.replaceChildren(h('p', { class: 'error' }, e.message));
      return;
    }
    const headers = opts.columns.map((c) => {
      const th = h('th', { class: (c.num ? 'num ' : '') + (c.key ? 'sortable' : '') },
        c.title + (c.key && state.sort === c.key ? (state.reverse ? ' ▼' : ' ▲') : ''));
      if (c.key) th.addEventListener('click', () => {
        if (state.sort === c.key) state.reverse = !state.reverse;
        else { state.sort = c.key; state.reverse = false; }
        load();
      });
      return th;
    });
    const rows = data.items.map((item) => h('tr', {}, opts.columns.map((c) => c.render(item))));
    holder.replaceChildren(table(headers, rows, state.name ? 'No match' : 'None yet'));
    info.textContent = `Page ${data.page} of ${Math.max(data.page_count, 1)} · ` +
      `${fmtNum(data.filtered_count)} matching of ${fmtNum(data.total_count)}`;
    prev.disabled = data.page <= 1;
    next.disabled = data.page >= data.page_count;
  }
  root.reload = load;
  // The periodic refresh leaves the table alone while the user is typing in one of its rows.
  root.refresh = () => (holder.contains(document.activeElement) ? Promise.resolve() : load());
  load();
  return root;
}
