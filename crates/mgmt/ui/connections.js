// Connections (list, close with a reason) and channels (list).
import { api, h, td, tdNum, pagedTable, enc, attempt, fmtRate } from './lib.js';

export async function renderConnections(main) {
  const list = pagedTable({
    id: 'connections',
    base: (vhost) => (vhost ? `/api/vhosts/${enc(vhost)}/connections` : '/api/connections'),
    vhostFilter: true,
    columns: [
      { title: 'Name', key: 'name', render: (c) => td(c.name) },
      { title: 'User', key: 'user', render: (c) => td(c.user) },
      { title: 'Vhost', key: 'vhost', render: (c) => td(c.vhost) },
      { title: 'Peer', render: (c) => td(`${c.peer_host}:${c.peer_port}`) },
      { title: 'Client', render: (c) => td(clientOf(c)) },
      { title: 'TLS', render: (c) => td(c.ssl ? 'yes' : '') },
      { title: 'Channels', key: 'channels', num: true, render: (c) => tdNum(c.channels) },
      { title: 'From client', num: true, render: (c) => td(bytesRate(c.recv_oct_details), 'num') },
      { title: 'To client', num: true, render: (c) => td(bytesRate(c.send_oct_details), 'num') },
      { title: 'State', render: (c) => td(c.state) },
      { title: 'Close', render: (c) => h('td', {}, closeForm(c.name, () => list.reload())) },
    ],
  });
  main.append(h('h1', {}, 'Connections'), list);
  return { refresh: async () => list.refresh() };
}

// Bytes per second, e.g. "12.5 B/s".
function bytesRate(d) {
  return fmtRate(d?.rate).replace('/s', ' B/s');
}

// "product version" from the client's properties, and its connection_name if it gave one.
function clientOf(c) {
  const p = c.client_properties || {};
  const product = [p.product, p.version].filter(Boolean).join(' ');
  return p.connection_name ? `${product} (${p.connection_name})` : product;
}

function closeForm(name, done) {
  const reason = h('input', { placeholder: 'Reason', size: 16, 'aria-label': 'Close reason' });
  const button = h('button', { type: 'button', class: 'danger' }, 'Close');
  button.addEventListener('click', () => attempt(async () => {
    const headers = reason.value ? { 'X-Reason': reason.value } : {};
    await api('DELETE', `/api/connections/${enc(name)}`, undefined, { headers: { ...headers } });
    done();
  }, `Closed ${name}`));
  return h('span', { class: 'bar' }, reason, button);
}

export async function renderChannels(main) {
  const list = pagedTable({
    id: 'channels',
    base: (vhost) => (vhost ? `/api/vhosts/${enc(vhost)}/channels` : '/api/channels'),
    vhostFilter: true,
    columns: [
      { title: 'Channel', key: 'name', render: (c) => td(c.name) },
      { title: 'User', key: 'user', render: (c) => td(c.user) },
      { title: 'Vhost', key: 'vhost', render: (c) => td(c.vhost) },
      { title: 'Mode', render: (c) => td([c.confirm && 'confirm', c.transactional && 'tx'].filter(Boolean).join(' ')) },
      { title: 'Prefetch', num: true, render: (c) => tdNum(c.prefetch_count) },
      { title: 'Unacked', key: 'messages_unacknowledged', num: true, render: (c) => tdNum(c.messages_unacknowledged) },
      { title: 'Consumers', key: 'consumer_count', num: true, render: (c) => tdNum(c.consumer_count) },
      { title: 'State', render: (c) => td(c.state) },
    ],
  });
  main.append(h('h1', {}, 'Channels'), list);
  return { refresh: async () => list.refresh() };
}
