// Connections (list, close with a reason) and channels (list).
import { api, h, td, tdNum, table, pagedTable, enc, attempt, fmtRate, fmtNum } from './lib.js';
import { props } from './queues.js';

export const connectionHref = (name) => `#/connections/${enc(name)}`;
export const channelHref = (name) => `#/channels/${enc(name)}`;

export async function renderConnections(main) {
  const list = pagedTable({
    id: 'connections',
    base: (vhost) => (vhost ? `/api/vhosts/${enc(vhost)}/connections` : '/api/connections'),
    vhostFilter: true,
    columns: [
      { title: 'Name', key: 'name', render: (c) => h('td', {}, h('a', { href: connectionHref(c.name), class: 'connection-link' }, c.name)) },
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
      { title: 'Channel', key: 'name', render: (c) => h('td', {}, h('a', { href: channelHref(c.name), class: 'channel-link' }, c.name)) },
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

// One connection: what the client told us, its counters, its channels, and closing it.
export async function renderConnection(main, name) {
  const base = `/api/connections/${enc(name)}`;
  const info = h('div', { class: 'cols' });
  const channels = h('div', { id: 'connection-channels' });
  let gone = false;

  async function refresh() {
    if (gone) return;
    const [c, chans] = await Promise.all([api('GET', base), api('GET', `${base}/channels`)]);
    const p = c.client_properties || {};
    info.replaceChildren(
      props([['User', c.user], ['Virtual host', c.vhost], ['Peer', `${c.peer_host}:${c.peer_port}`],
        ['Client', clientOf(c) || '—', 'connection-client'], ['Platform', p.platform || '—'],
        ['Protocol', c.protocol], ['TLS', c.ssl ? 'yes' : 'no'], ['Mechanism', c.auth_mechanism],
        ['Connected', c.connected_at ? new Date(c.connected_at).toLocaleString() : '—']]),
      props([['Channels', fmtNum(c.channels), 'connection-channel-count'],
        ['Frame max', fmtNum(c.frame_max)], ['Channel max', fmtNum(c.channel_max)],
        ['Heartbeat', `${c.timeout} s`],
        ['From client', `${fmtNum(c.recv_oct)} B (${bytesRate(c.recv_oct_details)})`],
        ['To client', `${fmtNum(c.send_oct)} B (${bytesRate(c.send_oct_details)})`]]));
    channels.replaceChildren(table(['Channel', 'Mode', 'Prefetch', 'Unacked', 'Consumers'],
      chans.map((ch) => h('tr', {},
        h('td', {}, h('a', { href: channelHref(ch.name) }, ch.name)),
        td([ch.confirm && 'confirm', ch.transactional && 'tx'].filter(Boolean).join(' ')),
        tdNum(ch.prefetch_count), tdNum(ch.messages_unacknowledged), tdNum(ch.consumer_count))),
      'No channels'));
  }

  await refresh();
  main.append(h('h1', {}, 'Connection ', h('span', { id: 'connection-name' }, name)), info,
    h('h2', {}, 'Channels'), channels,
    h('h2', {}, 'Close this connection'), closeForm(name, () => {
      gone = true;
      location.hash = '#/connections';
    }));
  return { refresh };
}

// One channel: its settings and counts, and the consumers on it.
export async function renderChannel(main, name) {
  const info = h('div', { class: 'cols' });
  const consumers = h('div', { id: 'channel-consumers' });

  async function refresh() {
    const ch = await api('GET', `/api/channels/${enc(name)}`);
    const conn = ch.connection_details || {};
    info.replaceChildren(
      props([['Connection', h('a', { href: connectionHref(conn.name || '') }, conn.name || '—')],
        ['User', ch.user], ['Virtual host', ch.vhost], ['Number', String(ch.number)],
        ['Mode', [ch.confirm && 'confirm', ch.transactional && 'tx'].filter(Boolean).join(' ') || 'plain']]),
      props([['Prefetch', fmtNum(ch.prefetch_count)], ['Global prefetch', fmtNum(ch.global_prefetch_count)],
        ['Unacked', fmtNum(ch.messages_unacknowledged), 'channel-unacked'],
        ['Consumers', fmtNum(ch.consumer_count), 'channel-consumer-count'], ['State', ch.state]]));
    const mine = (await api('GET', `/api/consumers/${enc(ch.vhost)}`))
      .filter((c) => c.channel_details && c.channel_details.name === name);
    consumers.replaceChildren(table(['Queue', 'Consumer tag', 'Ack required', 'Exclusive', 'Prefetch'],
      mine.map((c) => h('tr', {}, td(c.queue && c.queue.name), td(c.consumer_tag),
        td(c.ack_required ? 'yes' : 'no'), td(c.exclusive ? 'yes' : 'no'), tdNum(c.prefetch_count))),
      'No consumers'));
  }

  await refresh();
  main.append(h('h1', {}, 'Channel ', h('span', { id: 'channel-name' }, name)), info,
    h('h2', {}, 'Consumers'), consumers);
  return { refresh };
}
