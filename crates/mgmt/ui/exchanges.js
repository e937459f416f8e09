// Exchanges: the paged list with an add form, and one exchange's page (bindings from it,
// add/remove bindings, publish, delete).
import { api, h, td, pagedTable, enc, attempt, vhostSelect, parseJsonField, table, confirmDo, flash } from './lib.js';
import { publishForm } from './messages.js';
import { queueHref } from './queues.js';

// The default exchange's name is ''; the API's paths call it amq.default.
const pathName = (name) => enc(name || 'amq.default');
export const exchangeHref = (vhost, name) => `#/exchanges/${enc(vhost)}/${enc(name || 'amq.default')}`;

function features(x) {
  return [x.durable && 'D', x.auto_delete && 'AD', x.internal && 'I', x.policy && `policy: ${x.policy}`].filter(Boolean).join(' ');
}

export async function renderList(main) {
  const list = pagedTable({
    id: 'exchanges',
    base: (vhost) => (vhost ? `/api/exchanges/${enc(vhost)}` : '/api/exchanges'),
    vhostFilter: true,
    columns: [
      { title: 'Vhost', key: 'vhost', render: (x) => td(x.vhost) },
      { title: 'Name', key: 'name', render: (x) => h('td', {}, h('a', { href: exchangeHref(x.vhost, x.name) }, x.name || '(AMQP default)')) },
      { title: 'Type', key: 'type', render: (x) => td(x.type) },
      { title: 'Features', render: (x) => td(features(x)) },
      { title: 'Arguments', render: (x) => td(Object.keys(x.arguments || {}).length ? JSON.stringify(x.arguments) : '') },
    ],
  });
  main.append(h('h1', {}, 'Exchanges'), list, h('h2', {}, 'Add an exchange'), await addForm(() => list.reload()));
  return { refresh: async () => list.refresh() };
}

async function addForm(done) {
  const vhost = await vhostSelect({ id: 'exchange-add-vhost' });
  const name = h('input', { id: 'exchange-add-name', required: true, size: 30 });
  const type = h('select', { id: 'exchange-add-type' }, ['direct', 'fanout', 'topic', 'headers', 'x-consistent-hash', 'x-message-deduplication', 'x-delayed-message'].map((t) => h('option', { value: t }, t)));
  const durable = h('select', { id: 'exchange-add-durable' }, h('option', { value: 'true' }, 'Durable'), h('option', { value: 'false' }, 'Transient'));
  const autoDelete = h('select', { id: 'exchange-add-auto-delete' }, h('option', { value: 'false' }, 'No'), h('option', { value: 'true' }, 'Yes'));
  const internal = h('select', { id: 'exchange-add-internal' }, h('option', { value: 'false' }, 'No'), h('option', { value: 'true' }, 'Yes'));
  const args = h('input', { id: 'exchange-add-arguments', placeholder: '{"alternate-exchange": "ae"}', size: 40 });
  const f = h('form', { class: 'stack', id: 'exchange-add' },
    h('label', { for: 'exchange-add-vhost' }, 'Virtual host'), vhost,
    h('label', { for: 'exchange-add-name' }, 'Name'), name,
    h('label', { for: 'exchange-add-type' }, 'Type'), type,
    h('label', { for: 'exchange-add-durable' }, 'Durability'), durable,
    h('label', { for: 'exchange-add-auto-delete' }, 'Auto delete'), autoDelete,
    h('label', { for: 'exchange-add-internal' }, 'Internal'), internal,
    h('label', { for: 'exchange-add-arguments' }, 'Arguments (JSON)'), args,
    h('button', { type: 'submit', class: 'primary', id: 'exchange-add-submit' }, 'Add exchange'));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    attempt(async () => {
      await api('PUT', `/api/exchanges/${enc(vhost.value)}/${enc(name.value)}`, {
        type: type.value, durable: durable.value === 'true', auto_delete: autoDelete.value === 'true',
        internal: internal.value === 'true', arguments: parseJsonField(args.value, 'Arguments'),
      });
      flash(`Exchange ${name.value} declared.`);
      name.value = '';
      done();
    });
  });
  return f;
}

export async function renderDetail(main, vhost, rawName) {
  const name = rawName === 'amq.default' ? '' : rawName;
  const base = `/api/exchanges/${enc(vhost)}/${pathName(name)}`;
  const info = h('div');
  const bindings = h('div', { id: 'exchange-bindings' });

  async function refresh() {
    const [x, binds] = await Promise.all([api('GET', base), api('GET', `${base}/bindings/source`)]);
    info.replaceChildren(h('dl', { class: 'props' },
      h('dt', {}, 'Virtual host'), h('dd', {}, x.vhost), h('dt', {}, 'Type'), h('dd', {}, x.type),
      h('dt', {}, 'Features'), h('dd', {}, features(x) || '—'),
      h('dt', {}, 'Arguments'), h('dd', {}, JSON.stringify(x.arguments || {})),
      h('dt', {}, 'Policy'), h('dd', {}, x.policy || '—')));
    bindings.replaceChildren(table(['To', 'Type', 'Routing key', 'Arguments', ''],
      binds.map((b) => h('tr', {},
        h('td', {}, b.destination_type === 'queue'
          ? h('a', { href: queueHref(vhost, b.destination) }, b.destination)
          : h('a', { href: exchangeHref(vhost, b.destination) }, b.destination)),
        td(b.destination_type), td(b.routing_key), td(JSON.stringify(b.arguments || {})),
        h('td', {}, name ? h('button', {
          type: 'button', class: 'danger',
          onclick: () => attempt(async () => {
            const kind = b.destination_type === 'queue' ? 'q' : 'e';
            await api('DELETE', `/api/bindings/${enc(vhost)}/e/${enc(name)}/${kind}/${enc(b.destination)}/${enc(b.properties_key)}`);
            await refresh();
          }, 'Binding removed.'),
        }, 'Unbind') : ''))), 'No bindings'));
  }

  main.append(h('h1', {}, 'Exchange ', h('span', { id: 'exchange-name' }, name || '(AMQP default)')), info,
    h('h2', {}, 'Bindings from this exchange'), bindings);
  if (name) {
    const kind = h('select', { id: 'xbind-kind' }, h('option', { value: 'q' }, 'To queue'), h('option', { value: 'e' }, 'To exchange'));
    const dest = h('input', { id: 'xbind-destination', required: true });
    const key = h('input', { id: 'xbind-routing-key' });
    const args = h('input', { id: 'xbind-arguments', placeholder: '{}', size: 20 });
    const f = h('form', { class: 'inline' }, h('label', {}, 'Destination', kind), h('label', {}, 'Name', dest),
      h('label', {}, 'Routing key', key), h('label', {}, 'Arguments (JSON)', args), h('button', { type: 'submit' }, 'Bind'));
    f.addEventListener('submit', (ev) => {
      ev.preventDefault();
      attempt(async () => {
        await api('POST', `/api/bindings/${enc(vhost)}/e/${enc(name)}/${kind.value}/${enc(dest.value)}`,
          { routing_key: key.value, arguments: parseJsonField(args.value, 'Arguments') });
        await refresh();
      }, 'Binding added.');
    });
    main.append(f);
  }
  main.append(h('h2', {}, 'Publish message'), publishForm(vhost, name, '', null));
  if (name && !name.startsWith('amq.')) {
    main.append(h('h2', {}, 'Delete'), h('button', {
      type: 'button', class: 'danger', id: 'exchange-delete',
      onclick: () => confirmDo(`Delete exchange ${name}?`) && attempt(async () => {
        await api('DELETE', base);
        flash(`Exchange ${name} deleted.`);
        location.hash = '#/exchanges';
      }),
    }, 'Delete exchange'));
  }
  await refresh();
  return { refresh };
}
