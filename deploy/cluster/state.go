package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/productwatch/productwatch/pkg/secretfile"
)

// Spec is the cluster's shape: where its files live, its ports and how many
// of each process it runs. `up` records it in the state file, so that
// `scale` and `down`, run from another shell, act on the same cluster.
type Spec struct {
	StateDir    string `json:"stateDir"`    // absolute; default .run/cluster
	BinDir      string `json:"binDir"`      // bridge, gateway, nats-server; default bin
	DatabaseURL string `json:"databaseURL"` // empty: found or started as make run does
	Database    string `json:"database"`    // database created on the found server; default productwatch_cluster
	NATSAuthDir string `json:"natsAuthDir"` // deploy/nats: auth.conf and permissions.conf, when the repository has them

	Ports Ports `json:"ports"`

	Gateways    int           `json:"gateways"`    // default 3
	Bridges     int           `json:"bridges"`     // default 2
	DrainWindow time.Duration `json:"drainWindow"` // the gateways' DRAIN_WINDOW; default 10s

	// BridgeEnv and GatewayEnv are extra NAME=value settings of every
	// bridge and gateway (the chaos tests keep a long stream history, say).
	BridgeEnv  []string `json:"bridgeEnv,omitempty"`
	GatewayEnv []string `json:"gatewayEnv,omitempty"`
}

// natsNodes is the size of the NATS cluster: three, the smallest that keeps
// a replicated stream writable with one node down.
const natsNodes = 3

// Ports are the loopback ports of every process. Node, bridge and gateway i
// (from 1) use the first port plus i-1.
type Ports struct {
	NATSClient     int    `json:"natsClient"`     // default 14222-14224 (4222 is often a machine's own NATS)
	NATSCluster    int    `json:"natsCluster"`    // routes, default 16222-16224
	NATSMonitor    int    `json:"natsMonitor"`    // /healthz, /varz, /jsz; default 18222-18224
	BridgeMetrics  int    `json:"bridgeMetrics"`  // default 19091-19092
	Gateway        int    `json:"gateway"`        // plain HTTP behind haproxy; default 18081-
	GatewayMetrics int    `json:"gatewayMetrics"` // METRICS_ADDR; default 19101-
	HTTPSAddr      string `json:"httpsAddr"`      // haproxy, HTTPS and WSS; default 127.0.0.1:9443
	StatsAddr      string `json:"statsAddr"`      // haproxy's stats page; default 127.0.0.1:8404
}

// DefaultPorts returns the ports documented on [Ports].
func DefaultPorts() Ports {
	return Ports{NATSClient: 14222, NATSCluster: 16222, NATSMonitor: 18222, BridgeMetrics: 19091,
		Gateway: 18081, GatewayMetrics: 19101, HTTPSAddr: "127.0.0.1:9443", StatsAddr: "127.0.0.1:8404"}
}

// PortsFrom lays every port out from base: NATS at base+0..2 (clients),
// +10 (routes), +20 (monitoring), bridges at +30, gateways at +40 and their
// metrics at +70 (room for 30 gateways), haproxy at +98 and +99.
func PortsFrom(base int) Ports {
	return Ports{NATSClient: base, NATSCluster: base + 10, NATSMonitor: base + 20, BridgeMetrics: base + 30,
		Gateway: base + 40, GatewayMetrics: base + 70,
		HTTPSAddr: loopback(base + 98), StatsAddr: loopback(base + 99)}
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// maxGateways bounds scale: the gateway ports of PortsFrom leave room for 30.
const maxGateways = 30

// Node is one nats-server of the cluster.
type Node struct {
	Proc
	Index int `json:"index"`
}

// Member is a bridge or a gateway: its process and its index (from 1), which
// fixes its ports.
type Member struct {
	Proc
	Index int `json:"index"`
}

// State is what `up` leaves in StateDir/state.json: the spec and every
// process it started.
type State struct {
	Spec        Spec     `json:"spec"`
	DatabaseURL string   `json:"databaseURL"` // the resolved DSN of the cluster's database
	PrivatePG   string   `json:"privatePG"`   // data directory of a PostgreSQL this cluster started; empty if none
	NATS        []Node   `json:"nats"`
	Bridges     []Member `json:"bridges"`
	Gateways    []Member `json:"gateways"`
	HAProxy     *Proc    `json:"haproxy,omitempty"`
}

// Credentials are the secrets the cluster generates once and keeps in
// StateDir/credentials.json (mode 0600): one NATS password per user, the
// route password between the NATS nodes, and the REST API token.
type Credentials struct {
	Bridge   string `json:"bridge"`
	Gateway  string `json:"gateway"`
	Debug    string `json:"debug"`
	Route    string `json:"route"`
	APIToken string `json:"apiToken"`
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

// errNoCluster is returned by loadState when no cluster was started.
var errNoCluster = errors.New("no cluster state (make cluster starts one)")

func loadState(dir string) (*State, error) {
	data, err := os.ReadFile(statePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoCluster
	}
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", statePath(dir), err)
	}
	return &st, nil
}

// save writes the state atomically (a reader never sees half a file).
func (st *State) save() error {
	return secretfile.WriteJSON(statePath(st.Spec.StateDir), st)
}

// loadCredentials returns the kept credentials, generating the missing
// ones (all of them on first use). A corrupt file is an error, never
// overwritten: the running cluster's NATS configuration uses its passwords.
func loadCredentials(dir string) (Credentials, error) {
	var c Credentials
	err := secretfile.Keep(filepath.Join(dir, "credentials.json"), &c, &c.Bridge, &c.Gateway, &c.Debug, &c.Route, &c.APIToken)
	return c, err
}

// lockDir takes an exclusive lock on dir, so that two of up, down and scale
// never act on the same cluster at once. The lock goes with the process.
func lockDir(dir string) (release func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s (another make cluster command running?): %w", dir, err)
		}
		time.Sleep(100 * time.Millisecond) // another command holds it: poll until it is done
	}
}
