package main

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/hub"
)

// wsMetrics are the WebSocket endpoint's Prometheus metrics.
type wsMetrics struct {
	connections     prometheus.Gauge
	subscriptions   prometheus.Gauge
	eventsOut       prometheus.Counter
	conflated       prometheus.Counter
	dropped         *prometheus.CounterVec
	refused         prometheus.Counter
	commands        prometheus.Counter
	commandErrors   *prometheus.CounterVec
	deliveryLatency prometheus.Histogram
	queueWait       prometheus.Histogram
	resyncs         prometheus.Counter
	limitRefusals   *prometheus.CounterVec
	catchUps        *prometheus.CounterVec

	clientsConflated prometheus.Counter   // connections that fell behind and were conflated
	batchMessages    prometheus.Histogram // messages per socket write
}

func newWSMetrics(reg prometheus.Registerer, h *hub.Hub) *wsMetrics {
	const ns = "productwatch_ws_"
	m := &wsMetrics{
		connections:   prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "connections", Help: "Open WebSocket connections."}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "subscriptions", Help: "Product subscriptions of all connections."}),
		eventsOut:     prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "messages_sent_total", Help: "Messages written to sockets (events, snapshots, answers)."}),
		conflated: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "conflated_total",
			Help: "Events replaced by a newer one of the same product before a slow client read them."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "clients_dropped_total",
			Help: "Connections the gateway closed, by reason (slow, write_timeout, ping_timeout, rate_limit, read_limit, unread_answers, drain)."}, []string{"reason"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "refused_total",
			Help: "Upgrades refused: bad origin, bad handshake, connection limit, shutting down."}),
		commands: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "commands_total", Help: "Commands received."}),
		commandErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "command_errors_total",
			Help: "Error answers, by code."}, []string{"code"}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: ns + "delivery_latency_seconds",
			Help:    "From a change's commit-time clock (changedAt) to its write on the socket.",
			Buckets: []float64{.001, .002, .003, .005, .0075, .01, .025, .05, .1, .25, .5, 1, 5}}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: ns + "queue_wait_seconds",
			Help:    "How long an event waited in its connection's queue.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5}}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "resyncs_total",
			Help: "Products re-read from the database after a NATS reconnect or lost messages."}),
		limitRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "limit_refusals_total",
			Help: "Connections and subscriptions refused by a limit (connections_total, connections_per_addr, subscriptions_per_conn, subscriptions_per_addr, subscriptions_total, nats_interests, catchups_pending)."}, []string{"limit"}),
		catchUps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "catchups_total",
			Help: "Snapshot and resume reads, by outcome (ok, timeout, error)."}, []string{"outcome"}),
	}
	reg.MustRegister(m.connections, m.subscriptions, m.eventsOut, m.conflated, m.dropped, m.refused,
		m.commands, m.commandErrors, m.deliveryLatency, m.queueWait, m.resyncs, m.limitRefusals, m.catchUps,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: ns + "nats_subscriptions",
			Help: "Products this gateway holds a NATS subscription for."}, func() float64 { return float64(h.Products()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: ns + "events_received_total",
			Help: "Change events received from NATS."}, func() float64 { return float64(h.Received()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: ns + "deliveries_total",
			Help: "Events handed to connections' queues (one per subscriber)."}, func() float64 { return float64(h.Delivered()) }),
	)
	m.clientsConflated = prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "clients_conflated_total",
		Help: "Times a connection fell behind (its oldest waiting event too old, or its queue too long) and its waiting events began to be conflated per product."})
	m.batchMessages = prometheus.NewHistogram(prometheus.HistogramOpts{Name: ns + "write_batch_messages",
		Help:    "Messages written to a socket with one system call (the count is the number of socket writes).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64}})
	reg.MustRegister(m.clientsConflated, m.batchMessages)
	reg.MustRegister(allMetrics(h)...)
	return m
}

// eventsConflated counts events that a newer one of the same product
// replaced in a connection's queue (the outbox's hook).
func (m *wsMetrics) eventsConflated(n int) { m.conflated.Add(float64(n)) }

// sent records a written message; queued is zero for answers.
func (m *wsMetrics) sent(msg []byte, queued time.Time) {
	m.eventsOut.Inc()
	if queued.IsZero() {
		return
	}
	now := time.Now()
	m.queueWait.Observe(now.Sub(queued).Seconds())
	if at, ok := change.ChangedAt(msg); ok { // snapshots have no changedAt
		m.deliveryLatency.Observe(now.Sub(at).Seconds())
	}
}

// panics recovers, logs and counts panics of the gateway's goroutines
// (productwatch_gateway_panics_total{where}): a panic ends only the
// connection or the loop iteration it happened in, never the process.
type panics struct {
	logger *slog.Logger
	total  *prometheus.CounterVec
}

func newPanics(reg prometheus.Registerer, logger *slog.Logger) *panics {
	p := &panics{logger: logger, total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "productwatch_gateway_panics_total",
		Help: "Panics recovered, by where they happened (websocket_reader, websocket_writer, catchup, hub_dispatcher (fan-out helpers included), resyncer).",
	}, []string{"where"})}
	reg.MustRegister(p.total)
	return p
}

// recovered is deferred by the top function of a goroutine (defer
// p.recovered("websocket_reader", onPanic)): it recovers a panic, logs it
// with its stack, counts it under where and then calls onPanic (nil: none),
// which ends what the panic broke (closes the socket with 1011, say).
func (p *panics) recovered(where string, onPanic func()) {
	v := recover()
	if v == nil {
		return
	}
	p.report(where, v, debug.Stack())
	if onPanic != nil {
		onPanic()
	}
}

// report logs and counts a panic recovered elsewhere (hub.Options.OnPanic).
func (p *panics) report(where string, v any, stack []byte) {
	p.total.WithLabelValues(where).Inc()
	p.logger.Error("panic recovered", "where", where, "panic", fmt.Sprint(v), "stack", string(stack))
}
