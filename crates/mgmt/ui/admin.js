// Admin: users, virtual hosts, permissions, policies, vhost limits; Definitions: export
// download and import upload.
import { api, h, td, enc, attempt, table, form, confirmDo, forgetVhosts, vhostSelect, parseJsonField, flash, session } from './lib.js';

const delButton = (label, question, fn, reload) => h('button', {
  type: 'button', class: 'danger',
  onclick: () => confirmDo(question) && attempt(async () => { await fn(); await reload(); }, `${label} done.`),
}, label);

export async function renderAdmin(main) {
  const users = h('div', { id: 'admin-users' });
  const vhosts = h('div', { id: 'admin-vhosts' });
  const perms = h('div', { id: 'admin-permissions' });
  const policies = h('div', { id: 'admin-policies' });
  const limits = h('div', { id: 'admin-limits' });

  async function refresh() {
    const [u, v, p, pol, lim] = await Promise.all([
      api('GET', '/api/users'), api('GET', '/api/vhosts'), api('GET', '/api/permissions'),
      api('GET', '/api/policies'), api('GET', '/api/vhost-limits'),
    ]);
    // The forms' vhost selects follow the table (a vhost just added or deleted).
    for (const sel of [permVhost, polVhost, limVhost]) {
      const chosen = sel.value;
      sel.replaceChildren(...v.map((x) => h('option', { value: x.name }, x.name)));
      if (v.some((x) => x.name === chosen)) sel.value = chosen;
    }
    const tags = (t) => (Array.isArray(t) ? t.join(', ') : t || '');
    users.replaceChildren(table(['Name', 'Tags', 'Password', ''], u.map((x) => h('tr', {}, td(x.name), td(tags(x.tags)),
      td(x.password_hash ? 'yes' : 'no'),
      h('td', {}, delButton('Delete', `Delete user ${x.name}?`, () => api('DELETE', `/api/users/${enc(x.name)}`), refresh))))));
    vhosts.replaceChildren(table(['Name', 'Description', 'Messages', ''], v.map((x) => h('tr', {}, td(x.name), td(x.description),
      h('td', { class: 'num' }, String(x.messages ?? '')),
      h('td', {}, delButton('Delete', `Delete vhost ${x.name} and everything in it?`, async () => {
        await api('DELETE', `/api/vhosts/${enc(x.name)}`); forgetVhosts();
      }, refresh))))));
    perms.replaceChildren(table(['User', 'Vhost', 'Configure', 'Write', 'Read', ''], p.map((x) => h('tr', {}, td(x.user), td(x.vhost),
      td(x.configure), td(x.write), td(x.read),
      h('td', {}, delButton('Clear', `Clear ${x.user}'s permissions on ${x.vhost}?`,
        () => api('DELETE', `/api/permissions/${enc(x.vhost)}/${enc(x.user)}`), refresh))))));
    policies.replaceChildren(table(['Vhost', 'Name', 'Pattern', 'Apply to', 'Priority', 'Definition', ''], pol.map((x) => h('tr', {},
      td(x.vhost), td(x.name), td(x.pattern), td(x['apply-to']), td(String(x.priority)), h('td', {}, h('pre', {}, JSON.stringify(x.definition))),
      h('td', {}, delButton('Delete', `Delete policy ${x.name}?`, () => api('DELETE', `/api/policies/${enc(x.vhost)}/${enc(x.name)}`), refresh))))));
    const limitRows = [];
    for (const l of lim) for (const [k, val] of Object.entries(l.value || {})) {
      limitRows.push(h('tr', {}, td(l.vhost), td(k), td(String(val)),
        h('td', {}, delButton('Clear', `Clear ${k} of ${l.vhost}?`, () => api('DELETE', `/api/vhost-limits/${enc(l.vhost)}/${enc(k)}`), refresh))));
    }
    limits.replaceChildren(table(['Vhost', 'Limit', 'Value', ''], limitRows, 'No limits'));
  }

  const input = (id, attrs = {}) => h('input', { id, name: id, ...attrs });
  const userForm = form({ class: 'inline' }, [
    h('label', {}, 'Username', input('user-name', { required: true })),
    h('label', {}, 'Password', input('user-password', { type: 'password' })),
    h('label', {}, 'Tags (comma separated)', input('user-tags', { placeholder: 'administrator, monitoring' })),
    h('button', { type: 'submit' }, 'Add / update user')],
  async (v) => {
    const body = { tags: v['user-tags'] };
    if (v['user-password']) body.password = v['user-password']; else body.password_hash = '';
    await api('PUT', `/api/users/${enc(v['user-name'])}`, body);
    flash(`User ${v['user-name']} saved.`);
    await refresh();
  });
  const vhostForm = form({ class: 'inline' }, [
    h('label', {}, 'Name', input('vhost-name', { required: true })),
    h('label', {}, 'Description', input('vhost-description')),
    h('button', { type: 'submit' }, 'Add vhost')],
  async (v) => {
    await api('PUT', `/api/vhosts/${enc(v['vhost-name'])}`, { description: v['vhost-description'] });
    forgetVhosts();
    flash(`Vhost ${v['vhost-name']} added.`);
    await refresh();
  });
  const permVhost = await vhostSelect({ name: 'perm-vhost' });
  const permForm = form({ class: 'inline' }, [
    h('label', {}, 'User', input('perm-user', { required: true })), h('label', {}, 'Vhost', permVhost),
    h('label', {}, 'Configure', input('perm-configure', { value: '.*' })),
    h('label', {}, 'Write', input('perm-write', { value: '.*' })),
    h('label', {}, 'Read', input('perm-read', { value: '.*' })),
    h('button', { type: 'submit' }, 'Set permission')],
  async (v) => {
    await api('PUT', `/api/permissions/${enc(v['perm-vhost'])}/${enc(v['perm-user'])}`,
      { configure: v['perm-configure'], write: v['perm-write'], read: v['perm-read'] });
    await refresh();
  });
  const polVhost = await vhostSelect({ name: 'policy-vhost' });
  const policyForm = form({ class: 'inline' }, [
    h('label', {}, 'Vhost', polVhost), h('label', {}, 'Name', input('policy-name', { required: true })),
    h('label', {}, 'Pattern', input('policy-pattern', { required: true, value: '.*' })),
    h('label', {}, 'Apply to', h('select', { name: 'policy-apply-to' }, ['all', 'queues', 'exchanges'].map((x) => h('option', { value: x }, x)))),
    h('label', {}, 'Priority', input('policy-priority', { type: 'number', value: 0, size: 4 })),
    h('label', {}, 'Definition (JSON)', input('policy-definition', { required: true, placeholder: '{"max-length": 1000}', size: 30 })),
    h('button', { type: 'submit' }, 'Add / update policy')],
  async (v) => {
    await api('PUT', `/api/policies/${enc(v['policy-vhost'])}/${enc(v['policy-name'])}`, {
      pattern: v['policy-pattern'], 'apply-to': v['policy-apply-to'], priority: Number(v['policy-priority']),
      definition: parseJsonField(v['policy-definition'], 'Definition'),
    });
    await refresh();
  });
  const limVhost = await vhostSelect({ name: 'limit-vhost' });
  const limitForm = form({ class: 'inline' }, [
    h('label', {}, 'Vhost', limVhost),
    h('label', {}, 'Limit', h('select', { name: 'limit-name' }, ['max-connections', 'max-queues'].map((x) => h('option', { value: x }, x)))),
    h('label', {}, 'Value', input('limit-value', { type: 'number', required: true, size: 8 })),
    h('button', { type: 'submit' }, 'Set limit')],
  async (v) => {
    await api('PUT', `/api/vhost-limits/${enc(v['limit-vhost'])}/${enc(v['limit-name'])}`, { value: Number(v['limit-value']) });
    await refresh();
  });

  main.append(h('h1', {}, 'Admin'),
    h('h2', {}, 'Users'), users, userForm,
    h('h2', {}, 'Virtual hosts'), vhosts, vhostForm,
    h('h2', {}, 'Permissions'), perms, permForm,
    h('h2', {}, 'Policies'), policies, policyForm,
    h('h2', {}, 'Virtual host limits'), limits, limitForm);
  await refresh();
  return {};
}

export async function renderDefinitions(main) {
  const download = h('button', { type: 'button', class: 'primary', id: 'definitions-download' }, 'Download broker definitions');
  download.addEventListener('click', () => attempt(async () => {
    const res = await fetch('/api/definitions', { headers: { Authorization: session.auth, 'X-Warren-UI': '1' } });
    if (!res.ok) throw new Error(`download failed: ${res.status}`);
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-');
    const a = h('a', { href: url, download: `warren-definitions-${stamp}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }));
  const file = h('input', { type: 'file', accept: '.json,application/json', id: 'definitions-file' });
  const upload = h('button', { type: 'button', id: 'definitions-upload' }, 'Upload definitions');
  upload.addEventListener('click', () => attempt(async () => {
    if (!file.files.length) throw new Error('choose a definitions file first');
    const text = await file.files[0].text();
    parseJsonField(text, 'The file');
    await api('POST', '/api/definitions', text);
    forgetVhosts();
  }, 'Definitions imported.'));
  main.append(h('h1', {}, 'Definitions'),
    h('h2', {}, 'Export'), h('p', {}, 'Users, vhosts, permissions, policies, queues, exchanges and bindings as RabbitMQ\'s JSON.'), download,
    h('h2', {}, 'Import'), h('p', {}, 'Merged into the broker; the whole file is validated before anything changes.'),
    h('div', { class: 'bar' }, file, upload));
  return {};
}
