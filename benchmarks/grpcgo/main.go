// k1s0-grpcload: the compiled gRPC load generator of the benchmark harness (benchmarks/grpcgo.py).
//
// It speaks the harness's load-generator protocol (benchmarks/common.py): one JSON argument (its
// spec), "READY" once its connections are open, the case's Window as one JSON line on stdin, a
// warm-up that is not measured, then every call that completes inside the window is counted; one
// WorkerResult JSON line at the end. Clients are closed loops (one call in flight each).
//
// It needs no generated code: Python serialises the requests (our real protobuf messages) into a
// file of 4-byte big-endian lengths + bytes; they are sent round-robin with ClientConn.Invoke and a
// pass-through codec named "proto". Responses are not decoded, except that read calls count the
// top-level occurrences of their repeated `events` field (spec "count_field") with a small wire walk.
//
// Built by the harness (benchmarks/grpcgo.py) in GOPATH mode against Debian's golang-google-grpc-dev (grpc-go 1.33).
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/ioutil"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type spec struct {
	Target string `json:"target"`
	// several servers (the fleet cases): connection j goes to Targets[j*len(Targets)/connections],
	// so with clients a multiple of per_connection x len(Targets) each server gets an equal share
	Targets []string `json:"targets"`
	// full method name, e.g. /k1s0.system.eventstore.v1.EventStoreService/AppendEvents
	Method  string `json:"method"`
	Clients int    `json:"clients"`
	// clients per HTTP/2 connection (each connection is its own ClientConn)
	PerConnection int    `json:"per_connection"`
	Requests      string `json:"requests"`
	// remove the requests file once it is read (it is a temporary file of the Python wrapper)
	DeleteRequests bool `json:"delete_requests"`
	// events counted per successful call; 0: count the response's field CountField instead
	EventsPerCall int `json:"events_per_call"`
	CountField    int `json:"count_field"`
	// Go scheduler threads (GOMAXPROCS) unless the environment sets GOMAXPROCS; 0: 1. One is
	// cheaper per call than two here (no wake-ups of a second thread for every response) and
	// carries about 10,000 calls/s on this machine's cores.
	Procs int `json:"procs"`
}

type window struct {
	BeginAt  float64 `json:"begin_at"`
	Warmup   float64 `json:"warmup"`
	Duration float64 `json:"duration"`
}

type result struct {
	Ops         int       `json:"ops"`
	Events      int       `json:"events"`
	Errors      int       `json:"errors"`
	Conflicts   int       `json:"conflicts"`
	LatenciesMs []float64 `json:"latencies_ms"`
	CPUs        float64   `json:"cpu_s"`
	DurationS   float64   `json:"duration_s"`
	FirstError  string    `json:"first_error"`
}

// rawCodec passes serialised messages through: requests are []byte, responses land in *[]byte.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = data
	return nil
}

func (rawCodec) Name() string { return "proto" }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "k1s0-grpcload: "+format+"\n", args...)
	os.Exit(2)
}

func readRequests(path string) [][]byte {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		fail("reading the requests: %v", err)
	}
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 4 {
			fail("truncated requests file")
		}
		n := int(binary.BigEndian.Uint32(data))
		if len(data) < 4+n {
			fail("truncated requests file")
		}
		out = append(out, data[4:4+n])
		data = data[4+n:]
	}
	if len(out) == 0 {
		fail("no requests in %s", path)
	}
	return out
}

// countField counts the top-level length-delimited occurrences of field `field` in a message.
func countField(msg []byte, field int) (int, error) {
	count := 0
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return 0, errors.New("bad tag")
		}
		msg = msg[n:]
		switch key & 7 {
		case 0:
			_, m := binary.Uvarint(msg)
			if m <= 0 {
				return 0, errors.New("bad varint")
			}
			msg = msg[m:]
		case 1:
			if len(msg) < 8 {
				return 0, errors.New("short fixed64")
			}
			msg = msg[8:]
		case 5:
			if len(msg) < 4 {
				return 0, errors.New("short fixed32")
			}
			msg = msg[4:]
		case 2:
			l, m := binary.Uvarint(msg)
			if m <= 0 || uint64(len(msg)-m) < l {
				return 0, errors.New("bad length")
			}
			msg = msg[m+int(l):]
			if int(key>>3) == field {
				count++
			}
		default:
			return 0, fmt.Errorf("unsupported wire type %d", key&7)
		}
	}
	return count, nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func wall(seconds float64) time.Time {
	sec, frac := math.Modf(seconds)
	return time.Unix(int64(sec), int64(frac*1e9))
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: k1s0-grpcload '<json spec>'")
	}
	var s spec
	if err := json.Unmarshal([]byte(os.Args[1]), &s); err != nil {
		fail("bad spec: %v", err)
	}
	if len(s.Targets) == 0 {
		s.Targets = []string{s.Target}
	}
	if s.Clients < 1 || s.Method == "" || s.Targets[0] == "" {
		fail("spec needs target, method and clients >= 1")
	}
	if s.PerConnection < 1 {
		s.PerConnection = 4
	}
	if os.Getenv("GOMAXPROCS") == "" {
		if s.Procs < 1 {
			s.Procs = 1
		}
		runtime.GOMAXPROCS(s.Procs)
	}
	// fewer collections: the heap is small (the requests and the latencies), garbage is per call
	debug.SetGCPercent(400)
	requests := readRequests(s.Requests)
	if s.DeleteRequests {
		os.Remove(s.Requests)
	}

	conns := make([]*grpc.ClientConn, (s.Clients+s.PerConnection-1)/s.PerConnection)
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		// WithInsecure (plaintext); each Dial is its own HTTP/2 connection
		// Fixed flow-control windows (16 MiB) turn off grpc-go's bandwidth estimator, which would
		// otherwise send a PING (and read its ack) after received data: extra syscalls per call.
		target := s.Targets[i*len(s.Targets)/len(conns)]
		conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock(),
			grpc.WithInitialWindowSize(16<<20), grpc.WithInitialConnWindowSize(16<<20),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(64*1024*1024)))
		cancel()
		if err != nil {
			fail("connecting to %s: %v", target, err)
		}
		conns[i] = conn
	}

	fmt.Println("READY")
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && line == "" {
		fail("the harness went away before sending the window")
	}
	var w window
	if err := json.Unmarshal([]byte(line), &w); err != nil {
		fail("bad window: %v", err)
	}
	begin := wall(w.BeginAt)
	measureFrom := wall(w.BeginAt + w.Warmup)
	until := wall(w.BeginAt + w.Warmup + w.Duration)

	var cpuFrom, cpuUntil float64
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		time.Sleep(time.Until(measureFrom))
		cpuFrom = cpuSeconds()
		time.Sleep(time.Until(until))
		cpuUntil = cpuSeconds()
	}()

	time.Sleep(time.Until(begin))
	if path := os.Getenv("K1S0_GRPCLOAD_CPUPROFILE"); path != "" {
		// a CPU profile of the whole run (warm-up included), for looking at the client's own cost
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	var next uint64
	results := make([]result, s.Clients)
	var clients sync.WaitGroup
	for c := 0; c < s.Clients; c++ {
		clients.Add(1)
		go func(c int) {
			defer clients.Done()
			r := &results[c]
			conn := conns[c/s.PerConnection]
			ctx := context.Background()
			for {
				started := time.Now()
				if !started.Before(until) {
					return
				}
				request := requests[(atomic.AddUint64(&next, 1)-1)%uint64(len(requests))]
				var reply []byte
				err := conn.Invoke(ctx, s.Method, request, &reply)
				ended := time.Now()
				if ended.Before(measureFrom) || ended.After(until) {
					continue
				}
				r.Ops++
				r.LatenciesMs = append(r.LatenciesMs, float64(ended.Sub(started).Nanoseconds())/1e6)
				outcome := ""
				events := s.EventsPerCall
				if err != nil {
					if status.Code(err) == codes.Aborted {
						r.Conflicts++
						continue
					}
					outcome = err.Error()
				} else if events == 0 {
					n, cerr := countField(reply, s.CountField)
					switch {
					case cerr != nil:
						outcome = "undecodable response: " + cerr.Error()
					case n == 0:
						outcome = "empty page"
					default:
						events = n
					}
				}
				if outcome != "" {
					r.Errors++
					if r.FirstError == "" {
						if len(outcome) > 300 {
							outcome = outcome[:300]
						}
						r.FirstError = outcome
					}
					continue
				}
				r.Events += events
			}
		}(c)
	}
	clients.Wait()
	sampler.Wait()

	total := result{LatenciesMs: []float64{}, DurationS: w.Duration, CPUs: cpuUntil - cpuFrom}
	for i := range results {
		r := &results[i]
		total.Ops += r.Ops
		total.Events += r.Events
		total.Errors += r.Errors
		total.Conflicts += r.Conflicts
		total.LatenciesMs = append(total.LatenciesMs, r.LatenciesMs...)
		if total.FirstError == "" {
			total.FirstError = r.FirstError
		}
	}
	for _, conn := range conns {
		conn.Close()
	}
	out, err := json.Marshal(total)
	if err != nil {
		fail("encoding the result: %v", err)
	}
	os.Stdout.Write(append(out, '\n'))
}
