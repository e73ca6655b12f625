package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// bridgeMetrics are the bridge's Prometheus metrics. Counters and gauges are
// safe for concurrent use.
type bridgeMetrics struct {
	changesPublished  prometheus.Counter
	duplicates        prometheus.Counter
	skippedPublished  prometheus.Counter
	publishFailures   prometheus.Counter
	publishLatency    prometheus.Histogram
	lagChanges        prometheus.Gauge
	lagSeconds        prometheus.Gauge
	cursor            prometheus.Gauge
	polls             *prometheus.CounterVec
	listenerReconnect prometheus.Counter
	natsReconnects    prometheus.Counter
	leader            prometheus.Gauge
	wakeupWanted      prometheus.Gauge
	relayMode         *prometheus.GaugeVec
	horizonReads      prometheus.Counter
	notifyQueueUsage  prometheus.Gauge
	pruned            prometheus.Counter
	changeRate        prometheus.Gauge
	notifyThrottled   prometheus.Counter
	foreignMessages   prometheus.Counter
}

func newBridgeMetrics(reg prometheus.Registerer) *bridgeMetrics {
	const ns = "productwatch_bridge_"
	m := &bridgeMetrics{
		changesPublished: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "changes_published_total",
			Help: "Changes acknowledged by JetStream."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "duplicates_total",
			Help: "Publishes JetStream acknowledged as duplicates (same Nats-Msg-Id within the duplicate window)."}),
		skippedPublished: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "already_in_stream_total",
			Help: "Changes not republished because the stream already held them (checked after a restart or a failed publish)."}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "publish_failures_total",
			Help: "Publishes that failed or timed out and were retried."}),
		publishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: ns + "publish_latency_seconds",
			Help:    "From the change's commit-time clock (changedAt) to the JetStream acknowledgement.",
			Buckets: []float64{.0005, .001, .002, .003, .005, .0075, .01, .025, .05, .1, .25, .5, 1, 5}}),
		lagChanges: prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "lag_changes",
			Help: "Committed changes not yet acknowledged by JetStream (sampled)."}),
		lagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "lag_seconds",
			Help: "Age of the oldest committed change not yet acknowledged (sampled; 0 when none)."}),
		cursor: prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "cursor_seq",
			Help: "Every change up to this seq is in JetStream."}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "polls_total",
			Help: "Reads of the change log, by what started them (start, flowing, switching, wakeup, backlog, safety, reconnect, retry)."}, []string{"reason"}),
		listenerReconnect: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "listener_reconnects_total",
			Help: "Reconnections of the LISTEN connection to PostgreSQL."}),
		natsReconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "nats_reconnects_total",
			Help: "Reconnections to NATS."}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "leader",
			Help: "1 while this bridge holds the leader lock and publishes, 0 on standby."}),
		wakeupWanted: prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "wakeup_wanted",
			Help: "1 while writers are asked to NOTIFY (the bridge is idle), 0 while it reads the log continuously."}),
		notifyQueueUsage: prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "notification_queue_usage",
			Help: "pg_notification_queue_usage(): fraction of PostgreSQL's NOTIFY queue in use. Alert well below 1: a full queue stalls every commit that notifies."}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "pruned_total",
			Help: "Change log rows deleted past the retention window."}),
		foreignMessages: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "foreign_messages_total",
			Help: "Messages found newest on a product subject of the stream that the bridge did not publish (no change seq in Nats-Msg-Id, or a body that is not that change); the bridge publishes its change over them."}),
	}
	m.changeRate = prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "change_rate",
		Help: "The relay's estimate of changes per second (moving average over RATE_WINDOW); it decides between NOTIFY wake-ups and reading continuously."})
	m.notifyThrottled = prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "notify_throttled_total",
		Help: "Switches to continuous reading because writers queued on NOTIFY's commit lock (WAKEUP_MAX_WAITERS), not because of the rate."})
	m.relayMode = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: ns + "relay_mode",
		Help: "1 for the relay's current mode, 0 for the others: flowing (reading the log continuously, writers do not notify), switching (writers notify; reading until every writer that may not have has ended), idle (waiting for wake-ups)."}, []string{"mode"})
	for _, mode := range []relayMode{modeFlowing, modeSwitching, modeIdle} {
		m.relayMode.WithLabelValues(mode.String())
	}
	m.horizonReads = prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "local_horizon_reads_total",
		Help: "Reads of the change log that also read pg_locks for this database's oldest writer, because the server-wide xmin held a bound back for 20 ms (a long transaction, often in another database)."})
	reg.MustRegister(m.changeRate, m.notifyThrottled, m.relayMode, m.horizonReads)
	reg.MustRegister(m.changesPublished, m.duplicates, m.skippedPublished, m.publishFailures, m.publishLatency,
		m.lagChanges, m.lagSeconds, m.cursor, m.polls, m.listenerReconnect, m.natsReconnects, m.leader,
		m.wakeupWanted, m.notifyQueueUsage, m.pruned, m.foreignMessages)
	return m
}

// published records an acknowledged change.
func (m *bridgeMetrics) published(r changeRow, duplicate bool) {
	m.changesPublished.Inc()
	if duplicate {
		m.duplicates.Inc()
	}
	m.publishLatency.Observe(time.Since(r.changedAt).Seconds())
}
