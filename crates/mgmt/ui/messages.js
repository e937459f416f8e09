// Message forms shared by the queue and exchange pages: publish, get, move.
import { api, h, enc, attempt, flash, table, td, parseJsonField } from './lib.js';

// Publishes through `exchange` ('' = the default exchange, path name amq.default).
export function publishForm(vhost, exchange, defaultRoutingKey, onDone) {
  const path = `/api/exchanges/${enc(vhost)}/${enc(exchange || 'amq.default')}/publish`;
  const rk = h('input', { id: 'publish-routing-key', name: 'routing_key', value: defaultRoutingKey || '', size: 30 });
  const mode = h('select', { id: 'publish-delivery-mode', name: 'delivery_mode' },
    h('option', { value: '1' }, '1 - non-persistent'), h('option', { value: '2' }, '2 - persistent'));
  const headers = h('input', { id: 'publish-headers', name: 'headers', placeholder: '{"key": "value"}', size: 40 });
  const props = h('input', { id: 'publish-properties', name: 'props', placeholder: '{"content_type": "text/plain"}', size: 40 });
  const payload = h('textarea', { id: 'publish-payload', name: 'payload', rows: 3 });
  const f = h('form', { class: 'stack', id: 'publish-form' },
    h('label', { for: 'publish-routing-key' }, 'Routing key'), rk,
    h('label', { for: 'publish-delivery-mode' }, 'Delivery mode'), mode,
    h('label', { for: 'publish-headers' }, 'Headers (JSON)'), headers,
    h('label', { for: 'publish-properties' }, 'Properties (JSON)'), props,
    h('label', { for: 'publish-payload' }, 'Payload'), payload,
    h('button', { type: 'submit', class: 'primary', id: 'publish-submit' }, 'Publish message'));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    attempt(async () => {
      const properties = parseJsonField(props.value, 'Properties');
      properties.delivery_mode = Number(mode.value);
      const hdrs = parseJsonField(headers.value, 'Headers');
      if (Object.keys(hdrs).length) properties.headers = hdrs;
      const r = await api('POST', path, {
        properties, routing_key: rk.value, payload: payload.value, payload_encoding: 'string',
      });
      flash(r && r.routed ? 'Message published.' : 'Message published, but not routed to any queue.', !(r && r.routed));
      if (onDone) onDone();
    });
  });
  return f;
}

export function getForm(vhost, queue, onDone) {
  const ackmode = h('select', { id: 'get-ackmode', name: 'ackmode' },
    h('option', { value: 'ack_requeue_true' }, 'Nack message requeue true'),
    h('option', { value: 'ack_requeue_false' }, 'Automatic ack'),
    h('option', { value: 'reject_requeue_true' }, 'Reject requeue true'),
    h('option', { value: 'reject_requeue_false' }, 'Reject requeue false'));
  const encoding = h('select', { id: 'get-encoding' },
    h('option', { value: 'auto' }, 'Auto string / base64'), h('option', { value: 'base64' }, 'base64'));
  const count = h('input', { id: 'get-count', type: 'number', min: 1, value: 1, size: 5 });
  const results = h('div', { id: 'get-results' });
  const f = h('form', { class: 'inline', id: 'get-form' },
    h('label', {}, 'Ack mode', ackmode), h('label', {}, 'Encoding', encoding),
    h('label', {}, 'Messages', count),
    h('button', { type: 'submit', class: 'primary', id: 'get-submit' }, 'Get messages'));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    attempt(async () => {
      const msgs = await api('POST', `/api/queues/${enc(vhost)}/${enc(queue)}/get`, {
        count: Number(count.value), ackmode: ackmode.value, encoding: encoding.value, truncate: 50000,
      });
      const rows = msgs.map((m, i) => h('tr', { class: 'message' },
        td(String(i + 1)), td(m.exchange), td(m.routing_key), td(m.redelivered ? 'yes' : 'no'),
        td(String(m.message_count)),
        h('td', {}, h('pre', {}, JSON.stringify(m.properties || {}))),
        h('td', {}, h('pre', { class: 'payload' }, m.payload), m.payload_encoding === 'base64' ? h('span', { class: 'muted' }, ' (base64)') : '')));
      results.replaceChildren(table(['#', 'Exchange', 'Routing key', 'Redelivered', 'Remaining', 'Properties', 'Payload'],
        rows, 'Queue is empty'));
      if (onDone) onDone();
    });
  });
  return h('div', {}, f, results);
}

// The move dialog: to a queue, or through an exchange with a routing key; optional count.
export function moveDialog(vhost, queue, onDone) {
  const kind = h('select', { id: 'move-kind' }, h('option', { value: 'queue' }, 'Queue'), h('option', { value: 'exchange' }, 'Exchange'));
  const dest = h('input', { id: 'move-destination', required: true, size: 30 });
  const rk = h('input', { id: 'move-routing-key', size: 30 });
  const rkLabel = h('label', { for: 'move-routing-key' }, 'Routing key');
  const count = h('input', { id: 'move-count', type: 'number', min: 1, placeholder: 'all', size: 8 });
  const cancel = h('button', { type: 'button', id: 'move-cancel' }, 'Cancel');
  const f = h('form', { class: 'stack', method: 'dialog' },
    h('label', { for: 'move-kind' }, 'Destination'), kind,
    h('label', { for: 'move-destination' }, 'Name'), dest,
    rkLabel, rk,
    h('label', { for: 'move-count' }, 'Count'), count,
    h('div', { class: 'full bar' }, h('button', { type: 'submit', class: 'primary', id: 'move-submit' }, 'Move messages'), cancel));
  const dialog = h('dialog', { id: 'move-dialog' }, h('h2', {}, 'Move messages from ', h('b', {}, queue)),
    h('p', { class: 'muted' }, 'Moves ready messages in order; each batch is confirmed by the destination before it leaves this queue.'), f);
  const syncKind = () => { rk.disabled = kind.value === 'queue'; rkLabel.classList.toggle('muted', rk.disabled); };
  kind.addEventListener('change', syncKind);
  syncKind();
  cancel.addEventListener('click', () => dialog.close());
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    attempt(async () => {
      const body = { action: 'move' };
      if (kind.value === 'queue') body.destination_queue = dest.value;
      else { body.destination_exchange = dest.value; body.routing_key = rk.value; }
      if (count.value) body.count = Number(count.value);
      const r = await api('POST', `/api/queues/${enc(vhost)}/${enc(queue)}/actions`, body);
      dialog.close();
      flash(`Moved ${r.moved} message(s)` + (r.stopped ? ` (stopped: ${r.stopped})` : ''), !!r.stopped);
      if (onDone) onDone();
    });
  });
  return dialog;
}
