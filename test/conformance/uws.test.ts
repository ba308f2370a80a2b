import { uwsUnderTest } from '../transport-under-test.ts';
import { runConformance } from './suite.ts';

await runConformance(await uwsUnderTest());
