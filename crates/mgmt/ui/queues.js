// Queues: the paged list with an add form, and one queue's page (counts, consumers,
// bindings, publish, get, move, purge, delete).
import {
  api, h, td, tdNum, fmtNum, fmtRate, pagedTable, enc, attempt, vhostSelect, parseJsonField,
  table, confirmDo, flash, get,
} from './lib.js';
import { publishForm, getForm, moveDialog } from './messages.js';

const LIST_FIELDS = ['name', 'vhost', 'type', 'state', 'durable', 'auto_delete', 'exclusive', 'policy',
  'messages_ready', 'messages_unacknowledged', 'messages', 'consumers',
  'message_stats.publish_details.rate', 'message_stats.deliver_get_details.rate',
  'message_stats.ack_details.rate'];

export const queueHref = (vhost, name) => `#/queues/${enc(vhost)}/${enc(name)}`;

function features(q) {
  return [q.durable && 'D', q.auto_delete && 'AD', q.exclusive && 'Excl', q.policy && `policy: ${q.policy}`]
    .filter(Boolean).join(' ');
}

export async function renderList(main) {
  const list = pagedTable({
    id: 'queues',
    base: (vhost) => (vhost ? `/api/queues/${enc(vhost)}` : '/api/queues'),
    vhostFilter: true,
    fields: LIST_FIELDS,
    columns: [
      { title: 'Vhost', key: 'vhost', render: (q) => td(q.vhost) },
      { title: 'Name', key: 'name', render: (q) => h('td', {}, h('a', { href: queueHref(q.vhost, q.name), class: 'queue-link' }, q.name)) },
      { title: 'Type', render: (q) => td(q.type) },
      { title: 'Features', render: (q) => td(features(q)) },
      { title: 'State', render: (q) => td(q.state) },
      { title: 'Ready', key: 'messages_ready', num: true, render: (q) => tdNum(q.messages_ready) },
      { title: 'Unacked', key: 'messages_unacknowledged', num: true, render: (q) => tdNum(q.messages_unacknowledged) },
      { title: 'Total', key: 'messages', num: true, render: (q) => h('td', { class: 'num queue-total' }, fmtNum(q.messages)) },
      { title: 'Consumers', key: 'consumers', num: true, render: (q) => tdNum(q.consumers) },
      { title: 'Incoming', num: true, render: (q) => h('td', { class: 'num' }, fmtRate(get(q, 'message_stats.publish_details.rate') || 0)) },
      { title: 'Deliver / get', num: true, render: (q) => h('td', { class: 'num' }, fmtRate(get(q, 'message_stats.deliver_get_details.rate') || 0)) },
      { title: 'Ack', num: true, render: (q) => h('td', { class: 'num' }, fmtRate(get(q, 'message_stats.ack_details.rate') || 0)) },
    ],
  });
  main.append(h('h1', {}, 'Queues'), list, h('h2', {}, 'Add a queue'), await addForm(() => list.reload()));
  return { refresh: async () => list.refresh() };
}

async function addForm(done) {
  const vhost = await vhostSelect({ id: 'queue-add-vhost' });
  const name = h('input', { id: 'queue-add-name', required: true, size: 30 });
  const durable = h('select', { id: 'queue-add-durable' }, h('option', { value: 'true' }, 'Durable'), h('option', { value: 'false' }, 'Transient'));
  const autoDelete = h('select', { id: 'queue-add-auto-delete' }, h('option', { value: 'false' }, 'No'), h('option', { value: 'true' }, 'Yes'));
  const args = h('input', { id: 'queue-add-arguments', placeholder: '{"x-message-ttl": 60000}', size: 40 });
  const f = h('form', { class: 'stack', id: 'queue-add' },
    h('label', { for: 'queue-add-vhost' }, 'Virtual host'), vhost,
    h('label', { for: 'queue-add-name' }, 'Name'), name,
    h('label', { for: 'queue-add-durable' }, 'Durability'), durable,
    h('label', { for: 'queue-add-auto-delete' }, 'Auto delete'), autoDelete,
    h('label', { for: 'queue-add-arguments' }, 'Arguments (JSON)'), args,
    h('button', { type: 'submit', class: 'primary', id: 'queue-add-submit' }, 'Add queue'));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    attempt(async () => {
      await api('PUT', `/api/queues/${enc(vhost.value)}/${enc(name.value)}`, {
        durable: durable.value === 'true', auto_delete: autoDelete.value === 'true',
        arguments: parseJsonField(args.value, 'Arguments'),
      });
      flash(`Queue ${name.value} declared.`);
      name.value = '';
      done();
    });
  });
  return f;
}

export function props(pairs) {
  return h('dl', { class: 'props' }, pairs.flatMap(([k, v, id]) => [h('dt', {}, k), h('dd', id ? { id } : {}, v)]));
}

export async function renderDetail(main, vhost, name) {
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  const info = h('div', { class: 'cols' });
  const consumers = h('div', { id: 'queue-consumers' });
  const bindings = h('div', { id: 'queue-bindings' });
  let gone = false;

  async function refresh() {
    if (gone) return;
    // One queue's GET carries its consumers (`consumer_details`): no vhost-wide listing.
    const [q, binds] = await Promise.all([api('GET', base), api('GET', `${base}/bindings`)]);
    const ms = q.message_stats || {};
    info.replaceChildren(
      props([['Virtual host', q.vhost], ['Type', q.type], ['State', q.state], ['Features', features(q) || '—'],
        ['Arguments', JSON.stringify(q.arguments || {})], ['Policy', q.policy || '—'],
        ['Consumers', fmtNum(q.consumers), 'queue-consumer-count'],
        ['Consumer utilisation', q.consumer_utilisation == null ? '—' : `${Math.round(q.consumer_utilisation * 100)}%`]]),
      props([['Ready', fmtNum(q.messages_ready), 'queue-messages-ready'],
        ['Unacked', fmtNum(q.messages_unacknowledged), 'queue-messages-unacked'],
        ['Total', fmtNum(q.messages), 'queue-messages-total'],
        ['Bytes', fmtNum(q.message_bytes)],
        ['Publish', fmtRate(get(ms, 'publish_details.rate') || 0)],
        ['Deliver / get', fmtRate(get(ms, 'deliver_get_details.rate') || 0)],
        ['Ack', fmtRate(get(ms, 'ack_details.rate') || 0)],
        ['Redelivered', fmtNum(ms.redeliver || 0)]]));
    const mine = q.consumer_details || [];
    consumers.replaceChildren(table(['Channel', 'Consumer tag', 'Ack required', 'Exclusive', 'Prefetch', 'Arguments'],
      mine.map((c) => h('tr', {}, td(c.channel_details && c.channel_details.name), td(c.consumer_tag),
        td(c.ack_required ? 'yes' : 'no'), td(c.exclusive ? 'yes' : 'no'), tdNum(c.prefetch_count),
        td(JSON.stringify(c.arguments || {})))), 'No consumers'));
    bindings.replaceChildren(table(['From exchange', 'Routing key', 'Arguments', ''],
      binds.map((b) => h('tr', {}, td(b.source || '(default exchange)'), td(b.routing_key),
        td(JSON.stringify(b.arguments || {})),
        h('td', {}, b.source ? h('button', {
          type: 'button', class: 'danger',
          onclick: () => attempt(async () => {
            await api('DELETE', `/api/bindings/${enc(vhost)}/e/${enc(b.source)}/q/${enc(name)}/${enc(b.properties_key)}`);
            await refresh();
          }, 'Binding removed.'),
        }, 'Unbind') : ''))), 'No bindings'));
  }

  const bindSource = h('input', { id: 'bind-source', required: true, placeholder: 'exchange' });
  const bindKey = h('input', { id: 'bind-routing-key', placeholder: 'routing key' });
  const bindArgs = h('input', { id: 'bind-arguments', placeholder: '{}', size: 20 });
  const bindForm = h('form', { class: 'inline' }, h('label', {}, 'From exchange', bindSource),
    h('label', {}, 'Routing key', bindKey), h('label', {}, 'Arguments (JSON)', bindArgs),
    h('button', { type: 'submit', id: 'bind-submit' }, 'Bind'));
  bindForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    attempt(async () => {
      await api('POST', `/api/bindings/${enc(vhost)}/e/${enc(bindSource.value)}/q/${enc(name)}`,
        { routing_key: bindKey.value, arguments: parseJsonField(bindArgs.value, 'Arguments') });
      await refresh();
    }, 'Binding added.');
  });

  const dialog = moveDialog(vhost, name, () => refresh());
  const actions = h('div', { class: 'bar' },
    h('button', { type: 'button', id: 'move-open', onclick: () => dialog.showModal() }, 'Move messages…'),
    h('button', {
      type: 'button', id: 'queue-purge', class: 'danger',
      onclick: () => confirmDo(`Purge all ready messages of ${name}?`) && attempt(async () => {
        await api('DELETE', `${base}/contents`);
        await refresh();
      }, 'Queue purged.'),
    }, 'Purge'),
    h('button', {
      type: 'button', id: 'queue-delete', class: 'danger',
      onclick: () => confirmDo(`Delete queue ${name}?`) && attempt(async () => {
        await api('DELETE', base);
        gone = true;
        flash(`Queue ${name} deleted.`);
        location.hash = '#/queues';
      }),
    }, 'Delete queue'));

  main.append(h('h1', {}, 'Queue ', h('span', { id: 'queue-name' }, name)), info, actions, dialog,
    h('h2', {}, 'Consumers'), consumers,
    h('h2', {}, 'Bindings'), bindings, bindForm,
    h('h2', {}, 'Publish message'),
    h('p', { class: 'muted' }, 'Published through the default exchange with this queue\'s name as the routing key.'),
    publishForm(vhost, '', name, () => refresh()),
    h('h2', {}, 'Get messages'),
    h('p', { class: 'muted' }, 'Getting messages is destructive unless they are requeued (the default).'),
    getForm(vhost, name, () => refresh()));
  await refresh();
  return { refresh };
}
