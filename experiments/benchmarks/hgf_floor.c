/* One step of the 3-level continuous HGF (standard volatility updates, relaxed mode,
 * float32) as a plain scalar C loop: the hardware floor against which the compiled
 * scans of ours and pyhgf are measured (experiments/hgf_floor.py, issue 18).
 *
 * The network and parameters are those of experiments/benchmarks/hgf.py's CONTINUOUS3:
 * input node 0 (observation precision 1e4) <- value parent 1 (omega -8) <- volatility
 * parent 2 (omega -4) <- volatility parent 3 (omega -5); couplings 1, time step 1. The
 * equations are those of ../shared/specs/hgf.md (a posterior precision <= 0 becomes
 * NaN and every one is capped at 1e10, as in pyhgf and ours). Each step writes the
 * 16 beliefs the compiled scans return: per node mean, precision, expected mean,
 * expected precision.
 *
 * usage: hgf_floor SERIES_TXT T REPEATS [DUMP_FILE]
 *   reads the series (one value per line), tiles it to T steps, runs the loop REPEATS
 *   times and prints each run's seconds as JSON; DUMP_FILE gets the [T, 16] float32
 *   beliefs of the last run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static float posterior_precision(float pi) {
  pi = pi > 1e10f ? 1e10f : pi; /* NaN stays NaN, as jnp.minimum keeps it */
  return pi <= 0.0f ? NAN : pi;
}

static void run(const float *u, int steps, float *out) {
  const float omega1 = -8.0f, omega2 = -4.0f, omega3 = -5.0f, kappa = 1.0f, pi0 = 1e4f;
  float mu1 = 1.04f, pi1 = 1e4f, mu2 = 1.0f, pi2 = 10.0f, mu3 = 0.5f, pi3 = 10.0f;
  for (int t = 0; t < steps; t++) {
    /* prediction, roots first (relaxed: + kappa^2 / (2 pi^_parent)) */
    float emean3 = mu3, big_omega3 = expf(omega3);
    float eprec3 = 1.0f / (1.0f / pi3 + big_omega3);
    float emean2 = mu2;
    float big_omega2 = expf(omega2 + kappa * emean3 + kappa * kappa / (2.0f * eprec3));
    float eprec2 = 1.0f / (1.0f / pi2 + big_omega2);
    float emean1 = mu1;
    float big_omega1 = expf(omega1 + kappa * emean2 + kappa * kappa / (2.0f * eprec2));
    float eprec1 = 1.0f / (1.0f / pi1 + big_omega1);
    float emean0 = emean1;
    /* value parent 1 of the input */
    pi1 = posterior_precision(eprec1 + pi0);
    mu1 = emean1 + pi0 * (u[t] - emean0) / pi1;
    float delta1 = mu1 - emean1;
    float vope1 = eprec1 / pi1 + eprec1 * delta1 * delta1 - 1.0f, gamma1 = big_omega1 * eprec1;
    /* volatility parent 2 of node 1 (standard update) */
    float kg = kappa * gamma1;
    pi2 = posterior_precision(eprec2 + 0.5f * kg * kg + kg * kg * vope1 -
                              0.5f * kappa * kappa * gamma1 * vope1);
    mu2 = emean2 + kg * vope1 / (2.0f * pi2);
    float delta2 = mu2 - emean2;
    float vope2 = eprec2 / pi2 + eprec2 * delta2 * delta2 - 1.0f, gamma2 = big_omega2 * eprec2;
    /* volatility parent 3 of node 2 */
    kg = kappa * gamma2;
    pi3 = posterior_precision(eprec3 + 0.5f * kg * kg + kg * kg * vope2 -
                              0.5f * kappa * kappa * gamma2 * vope2);
    mu3 = emean3 + kg * vope2 / (2.0f * pi3);
    float *o = out + 16 * t;
    o[0] = u[t], o[1] = pi0, o[2] = emean0, o[3] = pi0;
    o[4] = mu1, o[5] = pi1, o[6] = emean1, o[7] = eprec1;
    o[8] = mu2, o[9] = pi2, o[10] = emean2, o[11] = eprec2;
    o[12] = mu3, o[13] = pi3, o[14] = emean3, o[15] = eprec3;
  }
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s SERIES_TXT T REPEATS [DUMP_FILE]\n", argv[0]);
    return 2;
  }
  int steps = atoi(argv[2]), repeats = atoi(argv[3]), n = 0, cap = 1024;
  float *series = malloc(sizeof(float) * cap);
  FILE *f = fopen(argv[1], "r");
  if (!f) return 2;
  while (fscanf(f, "%f", &series[n]) == 1)
    if (++n == cap) series = realloc(series, sizeof(float) * (cap *= 2));
  fclose(f);
  if (n == 0 || steps < 1 || repeats < 1) return 2;
  float *u = malloc(sizeof(float) * steps), *out = malloc(sizeof(float) * 16 * (size_t)steps);
  for (int t = 0; t < steps; t++) u[t] = series[t % n];
  printf("{\"seconds\": [");
  for (int r = 0; r < repeats; r++) {
    double start = now();
    run(u, steps, out);
    printf("%s%.9f", r ? ", " : "", now() - start);
  }
  printf("]}\n");
  if (argc > 4) {
    FILE *d = fopen(argv[4], "wb");
    if (!d || fwrite(out, sizeof(float), 16 * (size_t)steps, d) != 16 * (size_t)steps) return 2;
    fclose(d);
  }
  return 0;
}
