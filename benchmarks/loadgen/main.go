// Command loadgen is nbstream's benchmark HTTP load generator and webhook receiver.
//
// It is written in Go so that generating load and receiving deliveries costs little CPU next
// to the Python stages being measured on the same 2-core machine.
//
//	loadgen load -url URL -templates FILE -duration D [-concurrency N] [-rate R]
//	        [-unique -secret S -objects N -run ID] [-accepted FILE]
//	loadgen receive [-addr 127.0.0.1:0]
//
// load posts webhook bodies (cycled from a JSON list of {"body", "signature"}) from N
// keep-alive clients for -duration, closed loop (as fast as answers come) or open loop at
// -rate requests/s, and prints one JSON summary: requests, accepted (202), statuses, elapsed seconds, accepted/s
// and latency percentiles in ms. With -unique, each body's sentinels are replaced per request
// (object id 900000001 and request id __NBSEQ__) and it is signed with -secret, so every
// request is a distinct NetBox event; -accepted writes "source_id unix_ns" per 202.
//
// receive answers every POST with 200 and remembers the X-NBStream-Source-Id header and the
// arrival time; it prints "LISTEN <port>" when ready, GET /count returns the number received
// and GET /dump the "source_id unix_ns" lines.
package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type template struct {
	Body      string `json:"body"`
	Signature string `json:"signature"`
}

type result struct {
	status  int
	latency time.Duration
	sid     string
	at      int64
}

func main() {
	switch {
	case len(os.Args) > 1 && os.Args[1] == "load":
		load(os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "receive":
		receive(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: loadgen load|receive [flags]")
		os.Exit(2)
	}
}

func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(q/100*float64(len(sorted)) + 0.999999999)
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func load(args []string) {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "", "ingest /webhook URL")
	path := fs.String("templates", "", "JSON list of {body, signature}")
	concurrency := fs.Int("concurrency", 8, "concurrent keep-alive clients")
	duration := fs.Duration("duration", 0, "send for this long (required)")
	rate := fs.Float64("rate", 0, "open loop: requests per second over all clients (0 = closed)")
	unique := fs.Bool("unique", false, "make each request a distinct event and sign it")
	secret := fs.String("secret", "", "HMAC-SHA512 secret for -unique")
	objects := fs.Int("objects", 5000, "distinct object ids for -unique")
	run := fs.String("run", "r", "request id prefix for -unique")
	accepted := fs.String("accepted", "", "write 'source_id unix_ns' per 202 to this file")
	_ = fs.Parse(args)
	if *duration <= 0 {
		fmt.Fprintln(os.Stderr, "-duration must be positive")
		os.Exit(2)
	}
	raw, err := os.ReadFile(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var templates []template
	if err := json.Unmarshal(raw, &templates); err != nil || len(templates) == 0 {
		fmt.Fprintln(os.Stderr, "bad templates:", err)
		os.Exit(1)
	}
	transport := &http.Transport{MaxIdleConns: *concurrency, MaxIdleConnsPerHost: *concurrency,
		MaxConnsPerHost: *concurrency, IdleConnTimeout: 90 * time.Second,
		DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	var seq atomic.Int64
	body := func(k int64) ([]byte, string) {
		t := templates[k%int64(len(templates))]
		if !*unique {
			return []byte(t.Body), t.Signature
		}
		b := bytes.Replace([]byte(t.Body), []byte("900000001"),
			[]byte(strconv.FormatInt(k%int64(*objects)+1, 10)), -1)
		b = bytes.Replace(b, []byte("__NBSEQ__"), []byte(*run+"-"+strconv.FormatInt(k, 10)), -1)
		mac := hmac.New(sha512.New, []byte(*secret))
		mac.Write(b)
		return b, hex.EncodeToString(mac.Sum(nil))
	}
	post := func(k int64) result {
		b, sig := body(k)
		req, _ := http.NewRequest("POST", *url, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Hook-Signature", sig)
		started := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return result{status: 0, latency: time.Since(started)}
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r := result{status: resp.StatusCode, latency: time.Since(started), at: time.Now().UnixNano()}
		if resp.StatusCode == 202 && *accepted != "" {
			var doc struct {
				SourceID string `json:"source_id"`
			}
			if json.Unmarshal(answer, &doc) == nil {
				r.sid = doc.SourceID
			}
		}
		return r
	}

	results := make([][]result, *concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*duration)
	more := func() bool { return time.Now().Before(deadline) }
	var ticks chan struct{}
	if *rate > 0 {
		ticks = make(chan struct{}, 100000)
		go func() {
			interval := time.Duration(float64(time.Second) / *rate)
			next := time.Now()
			for {
				if !more() {
					close(ticks)
					return
				}
				ticks <- struct{}{}
				next = next.Add(interval)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
		}()
	}
	for i := 0; i < *concurrency; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for {
				if ticks != nil {
					if _, ok := <-ticks; !ok {
						return
					}
				} else if !more() {
					return
				}
				results[i] = append(results[i], post(seq.Add(1)-1))
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	statuses := map[string]int{}
	var lat []float64
	total, ok := 0, 0
	var out *bufio.Writer
	if *accepted != "" {
		f, err := os.Create(*accepted)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		out = bufio.NewWriter(f)
		defer out.Flush()
	}
	for _, rs := range results {
		for _, r := range rs {
			total++
			statuses[strconv.Itoa(r.status)]++
			if r.status == 202 {
				ok++
				lat = append(lat, float64(r.latency.Microseconds())/1000)
				if out != nil && r.sid != "" {
					fmt.Fprintf(out, "%s %d\n", r.sid, r.at)
				}
			}
		}
	}
	sort.Float64s(lat)
	summary := map[string]any{
		"requests": total, "accepted": ok, "statuses": statuses, "elapsed_s": elapsed,
		"accepted_per_s": float64(ok) / elapsed,
		"latency_ms": map[string]float64{"p50": percentile(lat, 50), "p95": percentile(lat, 95),
			"p99": percentile(lat, 99), "max": percentile(lat, 100)},
	}
	_ = json.NewEncoder(os.Stdout).Encode(summary)
}

type arrival struct {
	sid string
	at  int64
}

func receive(args []string) {
	fs := flag.NewFlagSet("receive", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	_ = fs.Parse(args)
	var mu sync.Mutex
	arrivals := make([]arrival, 0, 1<<16)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			mu.Lock()
			defer mu.Unlock()
			switch r.URL.Path {
			case "/count":
				fmt.Fprintf(w, "%d\n", len(arrivals))
			case "/dump":
				bw := bufio.NewWriter(w)
				for _, a := range arrivals {
					fmt.Fprintf(bw, "%s %d\n", a.sid, a.at)
				}
				bw.Flush()
			case "/reset":
				arrivals = arrivals[:0]
			}
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		at := time.Now().UnixNano()
		mu.Lock()
		arrivals = append(arrivals, arrival{r.Header.Get("X-NBStream-Source-Id"), at})
		mu.Unlock()
		w.WriteHeader(200)
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTEN %d\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	_ = http.Serve(ln, handler)
}
